# syntax=docker/dockerfile:1
# The waypoint image: both binaries (`waypoint`, `ztunnel`), built `--locked` in release, on a small non-root
# runtime. Build from the repository root:
#
#   docker build -t waypoint:dev .                                  # the runtime image (last stage)
#   docker build --target iptables -t waypoint:dev-iptables .       # the ztunnel chart's redirect init image
#
# docs/deploy.md tells how the Helm charts in charts/ use them. tests/chart.rs checks this file statically
# (stages, --locked, both binaries, numeric non-root USER, ports); the image build itself is not run in CI.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- builder: the official Rust image, at least the highest rust-version in Cargo.lock's graph (tests/chart.rs
#      checks it), plus cmake for libz-ng-sys
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake=3.* \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Release profile keeps line tables (debug = 1) for local profiling; the image strips them.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p waypoint -p ztunnel --bins \
    && mkdir -p /out \
    && cp target/release/waypoint target/release/ztunnel /out/

# ---- iptables: root-only init image that installs the ztunnel's REDIRECT rules (never runs the proxies)
FROM debian:${DEBIAN_RELEASE}-slim AS iptables
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables=1.8.* \
    && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["/usr/sbin/iptables"]

# ---- runtime: distroless with glibc (same Debian release as the builder), numeric non-root user
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /out/waypoint /usr/local/bin/waypoint
COPY --from=builder /out/ztunnel /usr/local/bin/ztunnel
USER 65532:65532
# 15008 HBONE, 15020 Prometheus stats, 15021 readiness (/healthz/ready). The admin port (15000) stays on loopback.
EXPOSE 15008 15020 15021
ENTRYPOINT ["/usr/local/bin/waypoint"]
CMD ["--help"]
