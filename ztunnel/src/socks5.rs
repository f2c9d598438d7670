//! SOCKS5 outbound entry (RFC 1928): no authentication, `CONNECT` only; IPv4, IPv6 and domain-name
//! destinations (a domain name is a Service hostname, resolved by the planner).
//!
//! Per connection: **handshake** (method negotiation and the request, [`read_request`]) → **connect** through
//! [`Outbound`] → **reply** (success only once the upstream answered: HBONE `200` or TCP connected; failures
//! mapped by [`reply_code`]) → **splice** bytes both ways.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mesh::hbone::HboneError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::drain::Drain;
use crate::outbound::plan::{Destination, PlanError};
use crate::outbound::{splice_upstream, Outbound, OutboundError};

/// A client must finish the handshake within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const VERSION: u8 = 0x05;
const NO_AUTH: u8 = 0x00;
const NO_ACCEPTABLE_METHOD: u8 = 0xff;
const CMD_CONNECT: u8 = 0x01;
const ATYP_V4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_V6: u8 = 0x04;

/// RFC 1928 reply codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    NotAllowed = 0x02,
    NetworkUnreachable = 0x03,
    HostUnreachable = 0x04,
    ConnectionRefused = 0x05,
    TtlExpired = 0x06,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

/// A failed handshake.
#[derive(Debug, thiserror::Error)]
pub enum Socks5Error {
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("not SOCKS version 5 (got {0:#04x})")]
    Version(u8),
    #[error("client offers no \"no authentication\" method")]
    NoAcceptableMethod,
    #[error("command {0:#04x} not supported (CONNECT only)")]
    Command(u8),
    #[error("address type {0:#04x} not supported")]
    AddressType(u8),
    #[error("domain name is not UTF-8")]
    BadDomain,
    #[error("handshake timed out")]
    Timeout,
}

/// Reads the method negotiation (answering "no authentication") and the CONNECT request. Protocol errors the
/// client can be told about (unsupported command or address type, no acceptable method) are answered before
/// returning the error.
pub async fn read_request<S>(stream: &mut S) -> Result<Destination, Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let [version, n] = read_array::<2, _>(stream).await?;
    if version != VERSION {
        return Err(Socks5Error::Version(version));
    }
    let mut methods = vec![0u8; n as usize];
    stream.read_exact(&mut methods).await?;
    if !methods.contains(&NO_AUTH) {
        stream.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await?;
        return Err(Socks5Error::NoAcceptableMethod);
    }
    stream.write_all(&[VERSION, NO_AUTH]).await?;

    let [version, cmd, _reserved, atyp] = read_array::<4, _>(stream).await?;
    if version != VERSION {
        return Err(Socks5Error::Version(version));
    }
    if cmd != CMD_CONNECT {
        write_reply(stream, Reply::CommandNotSupported).await?;
        return Err(Socks5Error::Command(cmd));
    }
    let dest = match atyp {
        ATYP_V4 => {
            let ip = Ipv4Addr::from(read_array::<4, _>(stream).await?);
            Destination::Addr(SocketAddr::new(IpAddr::V4(ip), read_port(stream).await?))
        }
        ATYP_V6 => {
            let ip = Ipv6Addr::from(read_array::<16, _>(stream).await?);
            Destination::Addr(SocketAddr::new(IpAddr::V6(ip), read_port(stream).await?))
        }
        ATYP_DOMAIN => {
            let [len] = read_array::<1, _>(stream).await?;
            let mut name = vec![0u8; len as usize];
            stream.read_exact(&mut name).await?;
            let name = String::from_utf8(name).map_err(|_| Socks5Error::BadDomain)?;
            Destination::Host {
                name,
                port: read_port(stream).await?,
            }
        }
        other => {
            write_reply(stream, Reply::AddressTypeNotSupported).await?;
            return Err(Socks5Error::AddressType(other));
        }
    };
    Ok(dest)
}

/// Writes a reply; the bound address is always `0.0.0.0:0` (clients of a CONNECT do not use it).
pub async fn write_reply<S: AsyncWrite + Unpin>(stream: &mut S, reply: Reply) -> io::Result<()> {
    stream
        .write_all(&[VERSION, reply as u8, 0x00, ATYP_V4, 0, 0, 0, 0, 0, 0])
        .await?;
    stream.flush().await
}

/// The reply a failed outbound connection earns.
pub fn reply_code(err: &OutboundError) -> Reply {
    match err {
        OutboundError::NoSource(_) | OutboundError::NoCerts(_) => Reply::NotAllowed,
        OutboundError::Plan(PlanError::SelfCall(_)) => Reply::NotAllowed,
        OutboundError::Plan(_) => Reply::HostUnreachable,
        OutboundError::Hbone(HboneError::Refused { status, .. }) => match status.as_u16() {
            401 | 403 => Reply::NotAllowed,
            503 => Reply::ConnectionRefused,
            _ => Reply::GeneralFailure,
        },
        OutboundError::Hbone(HboneError::Connect { source, .. })
        | OutboundError::Tcp { source, .. } => io_reply(source),
        OutboundError::Hbone(HboneError::Timeout(_)) | OutboundError::TcpTimeout(_) => {
            Reply::TtlExpired
        }
        OutboundError::Hbone(_) => Reply::GeneralFailure,
    }
}

fn io_reply(e: &io::Error) -> Reply {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Reply::ConnectionRefused,
        io::ErrorKind::TimedOut => Reply::TtlExpired,
        io::ErrorKind::HostUnreachable => Reply::HostUnreachable,
        io::ErrorKind::NetworkUnreachable => Reply::NetworkUnreachable,
        io::ErrorKind::PermissionDenied => Reply::NotAllowed,
        _ => Reply::GeneralFailure,
    }
}

/// Accepts SOCKS5 clients until the drain's stop signal; each connection runs tracked by `drain`.
pub async fn run(listener: TcpListener, outbound: Arc<Outbound>, drain: Drain) {
    crate::outbound::accept_loop(
        listener,
        "socks5",
        outbound,
        drain,
        |stream, client, outbound| async move { serve_one(stream, client, &outbound).await },
    )
    .await;
}

async fn serve_one(mut stream: TcpStream, client: SocketAddr, outbound: &Outbound) {
    let _ = stream.set_nodelay(true);
    let dest = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(dest)) => dest,
        Ok(Err(e)) => return tracing::debug!(%client, "socks5 handshake: {e}"),
        Err(_) => return tracing::debug!(%client, "socks5 handshake: {}", Socks5Error::Timeout),
    };
    match outbound.connect(client, &dest).await {
        Ok((plan, upstream)) => {
            if let Err(e) = write_reply(&mut stream, Reply::Succeeded).await {
                return tracing::debug!(%client, "socks5 reply: {e}");
            }
            tracing::debug!(%client, %dest, kind = ?plan.kind, "socks5 connected");
            splice_upstream(stream, upstream).await;
        }
        Err(e) => {
            let reply = reply_code(&e);
            tracing::info!(%client, %dest, ?reply, "outbound refused: {e}");
            let _ = write_reply(&mut stream, reply).await;
        }
    }
}

async fn read_array<const N: usize, S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn read_port<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<u16> {
    Ok(u16::from_be_bytes(read_array::<2, _>(stream).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    /// Feeds `input` to `read_request`; returns its result and what it wrote back.
    async fn handshake(input: &[u8]) -> (Result<Destination, Socks5Error>, Vec<u8>) {
        let (mut client, mut server) = duplex(1024);
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let res = read_request(&mut server).await;
        drop(server);
        let mut out = vec![];
        client.read_to_end(&mut out).await.unwrap();
        (res, out)
    }

    #[tokio::test]
    async fn parses_the_three_address_types() {
        let ok = [VERSION, NO_AUTH];
        let cases: Vec<(Vec<u8>, Destination)> = vec![
            (
                vec![5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 7, 0x1f, 0x90],
                Destination::Addr("10.0.0.7:8080".parse().unwrap()),
            ),
            (
                [
                    vec![5, 2, 2, 0, 5, 1, 0, 4],
                    Ipv6Addr::LOCALHOST.octets().to_vec(),
                    vec![0, 80],
                ]
                .concat(),
                Destination::Addr("[::1]:80".parse().unwrap()),
            ),
            (
                [
                    vec![5, 1, 0, 5, 1, 0, 3, 9],
                    b"echo.demo".to_vec(),
                    vec![0, 80],
                ]
                .concat(),
                Destination::Host {
                    name: "echo.demo".into(),
                    port: 80,
                },
            ),
        ];
        for (input, want) in cases {
            let (res, out) = handshake(&input).await;
            assert_eq!(res.unwrap(), want);
            assert_eq!(out, ok);
        }
    }

    #[tokio::test]
    async fn refusals_are_answered() {
        // Only username/password offered.
        let (res, out) = handshake(&[5, 1, 2]).await;
        assert!(
            matches!(res, Err(Socks5Error::NoAcceptableMethod)),
            "{res:?}"
        );
        assert_eq!(out, [5, 0xff]);
        // BIND.
        let (res, out) = handshake(&[5, 1, 0, 5, 2, 0, 1, 1, 2, 3, 4, 0, 80]).await;
        assert!(matches!(res, Err(Socks5Error::Command(2))), "{res:?}");
        assert_eq!(out, [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
        // Unknown address type.
        let (res, out) = handshake(&[5, 1, 0, 5, 1, 0, 9]).await;
        assert!(matches!(res, Err(Socks5Error::AddressType(9))), "{res:?}");
        assert_eq!(out, [5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0]);
        // SOCKS4.
        let (res, _) = handshake(&[4, 1, 0, 80]).await;
        assert!(matches!(res, Err(Socks5Error::Version(4))), "{res:?}");
        // Truncated.
        let (res, _) = handshake(&[5, 1, 0, 5, 1, 0, 1, 10]).await;
        assert!(matches!(res, Err(Socks5Error::Io(_))), "{res:?}");
    }

    #[test]
    fn failure_replies() {
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let refused = |code: u16| {
            OutboundError::Hbone(HboneError::Refused {
                addr,
                authority: addr,
                status: http::StatusCode::from_u16(code).unwrap(),
            })
        };
        let tcp = |kind: io::ErrorKind| OutboundError::Tcp {
            addr,
            source: io::Error::from(kind),
        };
        let cases = [
            (OutboundError::NoSource(addr.ip()), Reply::NotAllowed),
            (
                OutboundError::Plan(PlanError::SelfCall(addr)),
                Reply::NotAllowed,
            ),
            (
                OutboundError::Plan(PlanError::UnknownHost("x".into())),
                Reply::HostUnreachable,
            ),
            (refused(503), Reply::ConnectionRefused),
            (refused(401), Reply::NotAllowed),
            (refused(400), Reply::GeneralFailure),
            (
                tcp(io::ErrorKind::ConnectionRefused),
                Reply::ConnectionRefused,
            ),
            (
                tcp(io::ErrorKind::NetworkUnreachable),
                Reply::NetworkUnreachable,
            ),
            (OutboundError::TcpTimeout(addr), Reply::TtlExpired),
        ];
        for (err, want) in cases {
            assert_eq!(reply_code(&err), want, "{err}");
        }
    }
}
