//! Hot swap of a large config on a real waypoint (issue 7: "a 1,000-route config compiled and live in under
//! 50 ms, with no latency spike on in-flight traffic"). Not criterion: one run prints one table.
//!
//! `cargo bench --bench swap` (about a minute; knobs: `SWAP_ROUTES=1000`, `SWAP_ROUNDS=20`,
//! `SWAP_WINDOW_MS=6000`, `SWAP_INTERVAL_MS=100`, `SWAP_CONNS=4`, `SWAP_PACE_US=1000`: each connection sends at
//! most one request per pace — with tokio's millisecond timer about one per 2 ms, ~1,800 req/s in all, ~3,700
//! with 8 connections; 0 sends back to back and saturates both cores). The mesh is `swap/mesh.rs`: `SWAP_ROUTES`
//! HTTPRoutes, each on its own Service bound to the waypoint, all served by two echo pods.
//!
//! 1. **Compile**, offline and idle: `Mesh::from_documents` (a full parse, nothing cached), the parse a hot swap
//!    does (`Mesh::from_documents_cached` after a change of one document: the others come from the
//!    `ParseCache`) and `snapshot::compile` of the config, `SWAP_ROUNDS` times, and what dropping a snapshot
//!    costs (`Live::store` pays it, in its graveyard, not the last reader).
//! 2. **Live**, on a [`Testbed`] (a real waypoint and ztunnels, HBONE with generated certs, echo backends on
//!    `127.a.b.x`): each round changes the probe route's `x-config-generation` header, and a probe connection
//!    (keep-alive, a request every `SWAP_PROBE_GAP_US`=1000 µs) sends until an answer carries the new value.
//!    - via the folder (what `waypoint run --manifests` does): the file is renamed into place; "stored" is when
//!      `Live::generation` moved, "seen" when a probe answer carried the change. This includes the folder
//!      source's 50 ms debounce (`source::DEBOUNCE`) and the ztunnels' reload of the same folder.
//!    - in-process: parse (cached: one document changed) and compile on the config lanes
//!      (`mesh::config::background::run`, as the kube and push sources do), `Live::store` of the waypoint's own `Live`
//!      (a fresh `ResilienceState`: this mode measures the swap, not breakers across it), each stage timed, then
//!      the probe.
//! 3. **In-flight traffic**: `SWAP_CONNS` keep-alive connections (one per route, not the probe's) sending
//!    through `SWAP_WINDOW_MS` windows: no swaps, a folder swap every `SWAP_INTERVAL_MS`, an in-process swap
//!    every `SWAP_INTERVAL_MS`, the in-process swap taken apart (parse and compile with nothing stored, at
//!    ordinary priority and then on the config lanes; then stores of snapshots compiled before the window),
//!    stand-ins of a compile on the lanes (`swap/interfere.rs`: the same CPU time as pure arithmetic, without
//!    and with `background::checkpoint` yields, as a cache sweep, as allocations), no swaps again; per window
//!    requests, errors, swaps (or jobs) and latency percentiles.
//!
//! Everything is one process on loopback (clients, ztunnels, waypoint, echoes): on a 2-core machine a compile
//! takes CPU from the traffic it is measured against, so compare windows of one run only.

#[path = "swap/interfere.rs"]
mod interfere;
#[path = "swap/load.rs"]
mod load;
#[path = "swap/mesh.rs"]
mod mesh;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::mesh::config::{background, GatewayRef, Live, Mesh, ParseCache, DEFAULT_TRUST_DOMAIN};
use anyhow::Context as _;
use interfere::{Calibrated, Kind};
use load::{ms, pct, wait_seen, Load, Phase, PHASES};
use waypoint::demo::write_atomic;
use waypoint::snapshot::{compile, Snapshot, WaypointSpec};
use waypoint::testbed::{Conn, Testbed};

// The allocator the waypoint binary ships with (glibc malloc would add its own costs to parse and compile).
::mesh::global_allocator!();

/// How long a round may take before the bench gives up on it.
const PATIENCE: Duration = Duration::from_secs(10);
/// Between windows (filed under warm-up): lets the last swap of a window finish.
const SETTLE: Duration = Duration::from_millis(300);

struct Knobs {
    routes: usize,
    rounds: usize,
    window: Duration,
    interval: Duration,
    conns: usize,
    pace: Duration,
    probe_gap: Duration,
}

fn knob(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: not a number")),
        Err(_) => default,
    }
}

impl Knobs {
    fn from_env() -> Knobs {
        Knobs {
            routes: knob("SWAP_ROUTES", 1000).max(2) as usize,
            rounds: knob("SWAP_ROUNDS", 20).max(1) as usize,
            window: Duration::from_millis(knob("SWAP_WINDOW_MS", 6000)),
            interval: Duration::from_millis(knob("SWAP_INTERVAL_MS", 100).max(1)),
            conns: knob("SWAP_CONNS", 4).max(1) as usize,
            pace: Duration::from_micros(knob("SWAP_PACE_US", 1000)),
            probe_gap: Duration::from_micros(knob("SWAP_PROBE_GAP_US", 1000)),
        }
    }
}

/// Durations of one stage over the rounds.
#[derive(Default)]
struct Stage(Vec<Duration>);

impl Stage {
    fn row(&mut self, what: &str) {
        self.0.sort();
        let (med, max) = (
            pct(&self.0, 50.0),
            self.0.last().copied().unwrap_or_default(),
        );
        println!("  {what:<52} {:>8} {:>8}", ms(med), ms(max));
    }
}

fn spec(hbone_port: u16) -> WaypointSpec {
    WaypointSpec {
        gateway: GatewayRef {
            namespace: mesh::NS.into(),
            name: "waypoint".into(),
        },
        hbone_port,
    }
}

fn parse(text: &str) -> Mesh {
    let docs = [(PathBuf::from("mesh.yaml"), text.to_string())];
    Mesh::from_documents(&docs, DEFAULT_TRUST_DOMAIN).expect("valid manifests")
}

/// [`parse`] through `cache`, as a hot swap does; without it when the cache is taken (by a copy of the job that
/// a fallback lane overtook, as `mesh::config::live` does).
fn parse_cached(text: &str, cache: &Mutex<ParseCache>) -> Mesh {
    let docs = [(PathBuf::from("mesh.yaml"), text.to_string())];
    match cache.try_lock() {
        Ok(mut cache) => Mesh::from_documents_cached(&docs, DEFAULT_TRUST_DOMAIN, &mut cache),
        Err(_) => Mesh::from_documents(&docs, DEFAULT_TRUST_DOMAIN),
    }
    .expect("valid manifests")
}

/// Parse (through `cache`) and compile on the config lanes, as the waypoint's sources do
/// ([`background::run`]): the snapshot and the two stage durations.
fn prepare(
    text: &Arc<str>,
    spec: &WaypointSpec,
    cache: &Arc<Mutex<ParseCache>>,
) -> (Snapshot, Duration, Duration) {
    let (text, spec, cache) = (text.clone(), spec.clone(), cache.clone());
    background::run(move || {
        let t = Instant::now();
        let mesh = parse_cached(&text, &cache);
        let parsed = t.elapsed();
        let t = Instant::now();
        let snap = compile(&mesh, &spec).expect("compiles");
        (snap, parsed, t.elapsed())
    })
}

/// [`prepare`], then store into `live`: the three stage durations.
fn swap_in(
    live: &Live<Snapshot>,
    text: &Arc<str>,
    spec: &WaypointSpec,
    cache: &Arc<Mutex<ParseCache>>,
) -> [Duration; 3] {
    let (snap, parsed, compiled) = prepare(text, spec, cache);
    let t = Instant::now();
    live.store(snap);
    [parsed, compiled, t.elapsed()]
}

fn main() {
    let k = Knobs::from_env();
    println!(
        "swap: {} HTTPRoutes on {} services bound to one waypoint, {} rounds; {} keep-alive connections, \
         {} ms windows, a swap every {} ms (one process on loopback; the machine's other load shows)",
        k.routes,
        k.routes,
        k.rounds,
        k.conns,
        k.window.as_millis(),
        k.interval.as_millis()
    );
    let compile_cpu = offline(&k);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    if let Err(e) = rt.block_on(live_bench(&k, compile_cpu)) {
        eprintln!("swap bench failed: {e:#}");
        std::process::exit(1);
    }
}

/// Part 1: parse and compile, no traffic. Returns what a hot swap's work costs idle: the medians of a cached
/// parse and of a compile, added.
fn offline(k: &Knobs) -> Duration {
    let text = mesh::manifests(k.routes, 1);
    let spec = spec(15008);
    let (mut p, mut c, mut pc, mut d) = (
        Stage::default(),
        Stage::default(),
        Stage::default(),
        Stage::default(),
    );
    let (cache, mut cached) = (Mutex::new(ParseCache::new()), Stage::default());
    parse_cached(&text, &cache);
    for round in 0..k.rounds {
        let t = Instant::now();
        let m = parse(&text);
        let parsed = t.elapsed();
        // The probe route's header changes: one document of the file.
        let changed = mesh::manifests(k.routes, round as u64 + 2);
        let t = Instant::now();
        let m2 = parse_cached(&changed, &cache);
        cached.0.push(t.elapsed());
        drop(m2);
        let t = Instant::now();
        let snap = compile(&m, &spec).expect("compiles");
        let compiled = t.elapsed();
        assert_eq!(snap.services.len(), k.routes, "every service is bound");
        let t = Instant::now();
        drop(snap);
        d.0.push(t.elapsed());
        p.0.push(parsed);
        c.0.push(compiled);
        pc.0.push(parsed + compiled);
    }
    println!(
        "\n1. compile, offline ({} KiB of manifests)               median ms   max ms",
        text.len() / 1024
    );
    p.row("parse, full (Mesh::from_documents)");
    cached.row("parse, cached, one document changed");
    c.row("compile (snapshot::compile)");
    let swap_cpu = pct(&cached.0, 50.0) + pct(&c.0, 50.0);
    pc.row("full parse + compile");
    d.row("drop a snapshot");
    let s = cache.lock().expect("cache").stats();
    println!(
        "  (parse cache: {} documents read, {} reused, {} held)",
        s.parsed, s.reused, s.entries
    );
    swap_cpu
}

/// Parts 2 and 3, on a running mesh.
async fn live_bench(k: &Knobs, compile_cpu: Duration) -> anyhow::Result<()> {
    let t = Instant::now();
    let tb = Testbed::start(&mesh::manifests(k.routes, 1))
        .await
        .context("starting the testbed")?;
    let started = t.elapsed();
    let wp = tb.waypoint(&format!("{}/waypoint", mesh::NS));
    let live = wp.live().clone();
    anyhow::ensure!(
        live.load().services.len() == k.routes,
        "not every route is served"
    );
    let client = tb.client("client-0");
    let spec = spec(tb.rewrite().hbone_port);
    let mut probe: Option<Conn> = None;
    wait_seen(&client, &mut probe, 1, k.probe_gap, PATIENCE)
        .await?
        .context("the first config is not served")?;
    println!(
        "\n2. swap rounds, idle (testbed up in {} ms)                median ms   max ms",
        started.as_millis()
    );

    let mut gen = 1;
    let (mut stored, mut seen, mut lag, mut probes) =
        (Stage::default(), Stage::default(), Stage::default(), 0);
    for round in 0..k.rounds {
        gen += 1;
        let text = tb.rewrite().manifests(&mesh::manifests(k.routes, gen))?;
        let before = live.generation();
        let poll = poll_generation(live.clone(), before);
        write_atomic(&tb.manifests_file(), &text)?;
        let t0 = Instant::now();
        let (at, n) = wait_seen(&client, &mut probe, gen, k.probe_gap, PATIENCE)
            .await?
            .with_context(|| format!("folder round {round}: not live within {PATIENCE:?}"))?;
        let st = poll
            .join()
            .expect("poller")
            .context("generation never moved")?;
        stored.0.push(st.saturating_duration_since(t0));
        seen.0.push(at - t0);
        lag.0.push(at.saturating_duration_since(st));
        probes += n;
        if let Some(e) = live.last_error() {
            anyhow::bail!("rejected: {e}");
        }
    }
    stored.row("folder: written -> stored (incl. 50 ms debounce)");
    seen.row("folder: written -> seen by a request");
    lag.row("folder: stored -> seen by a request");

    let mut stages: [Stage; 3] = Default::default();
    let (mut total, mut lag) = (Stage::default(), Stage::default());
    // One cache for the in-process swaps, warmed with the config now served (as a watcher's would be).
    let cache = Arc::new(Mutex::new(ParseCache::new()));
    parse_cached(
        &tb.rewrite().manifests(&mesh::manifests(k.routes, gen))?,
        &cache,
    );
    for _ in 0..k.rounds {
        gen += 1;
        let text: Arc<str> = tb
            .rewrite()
            .manifests(&mesh::manifests(k.routes, gen))?
            .into();
        let t0 = Instant::now();
        let (l, s, c) = (live.clone(), spec.clone(), cache.clone());
        let times = tokio::task::spawn_blocking(move || swap_in(&l, &text, &s, &c)).await?;
        let st = Instant::now();
        let (at, n) = wait_seen(&client, &mut probe, gen, k.probe_gap, PATIENCE)
            .await?
            .context("in-process round: not live")?;
        for (s, t) in stages.iter_mut().zip(times) {
            s.0.push(t);
        }
        total.0.push(at - t0);
        lag.0.push(at - st);
        probes += n;
    }
    stages[0].row("in-process: parse (cached, one document changed)");
    stages[1].row("in-process: compile");
    stages[2].row("in-process: Live::store (old one to the reaper)");
    lag.row("in-process: stored -> seen by a request");
    total.row("in-process: handed -> seen by a request");
    println!("  ({probes} probe requests)");

    in_flight(k, &tb, &live, &spec, gen, &cache, compile_cpu).await?;
    tb.shutdown().await;
    Ok(())
}

/// Part 3: latency of keep-alive traffic without and with swaps.
async fn in_flight(
    k: &Knobs,
    tb: &Testbed,
    live: &Arc<Live<Snapshot>>,
    spec: &WaypointSpec,
    gen: u64,
    cache: &Arc<Mutex<ParseCache>>,
    compile_cpu: Duration,
) -> anyhow::Result<()> {
    // Sized before any traffic, on a quiet machine.
    let stand_ins =
        Arc::new(tokio::task::spawn_blocking(move || Calibrated::new(compile_cpu)).await?);
    let texts: Vec<Arc<str>> = [gen + 1, gen + 2]
        .iter()
        .map(|g| {
            tb.rewrite()
                .manifests(&mesh::manifests(k.routes, *g))
                .map(Arc::from)
        })
        .collect::<anyhow::Result<_>>()?;
    let hard_stop = Instant::now() + 12 * (k.window + 2 * SETTLE) + Duration::from_secs(30);
    let load = Load::start(&tb.client("client-0"), k.routes, k.conns, k.pace, hard_stop);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut swaps = [0u64; PHASES];

    load.set(Phase::Quiet);
    tokio::time::sleep(k.window).await;

    load.set(Phase::FileSwaps);
    let (before, end) = (live.generation(), Instant::now() + k.window);
    let mut i = 0;
    while Instant::now() < end {
        write_atomic(&tb.manifests_file(), &texts[i % 2])?;
        i += 1;
        tokio::time::sleep(k.interval).await;
    }
    load.set(Phase::Warmup);
    tokio::time::sleep(SETTLE).await;
    swaps[Phase::FileSwaps as usize] = live.generation() - before;

    let mut compiles = paced_window(k, &load, Phase::DirectSwaps, &mut swaps, || {
        let (l, s, text, c) = (
            live.clone(),
            spec.clone(),
            texts[i % 2].clone(),
            cache.clone(),
        );
        i += 1;
        Some(move || swap_in(&l, &text, &s, &c).iter().sum())
    })
    .await?;
    let mut parts = decompose(k, live, spec, &texts, i, cache, &load, &mut swaps).await?;
    let mut lanes = stand_in_windows(k, &stand_ins, &load, &mut swaps).await?;

    load.set(Phase::QuietAfter);
    tokio::time::sleep(k.window).await;
    let mut s = load.finish().await;

    println!(
        "\n3. in-flight keep-alive traffic, {} connections, {}, {} ms windows",
        k.conns,
        if k.pace.is_zero() {
            "back to back".to_string()
        } else {
            format!("a request every {} us each at most", k.pace.as_micros())
        },
        k.window.as_millis()
    );
    println!(
        "  {:<18} {:>9} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8}",
        "window", "requests", "errors", "swaps", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    let windows = s.latencies.iter_mut().zip(s.errors).zip(swaps).enumerate();
    for (p, ((v, errors), swaps)) in windows.skip(1) {
        v.sort();
        println!(
            "  {:<18} {:>9} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8}",
            Phase::name(p),
            v.len(),
            errors,
            swaps,
            ms(pct(v, 50.0)),
            ms(pct(v, 99.0)),
            ms(pct(v, 99.9)),
            ms(v.last().copied().unwrap_or_default())
        );
    }
    compiles.row("in-process swap under load (parse+compile+store)");
    parts[0].row("under load: parse+compile at ordinary priority, not stored");
    parts[1].row("under load: parse+compile on the config lanes, not stored");
    parts[2].row("under load: Live::store of a compiled snapshot");
    println!(
        "  (stand-ins of a compile on the lanes, each {} ms of CPU idle:)",
        ms(compile_cpu)
    );
    for (stage, kind) in
        lanes
            .iter_mut()
            .zip(["spin", "spin, yields", "sweep 64 MiB", "alloc churn"])
    {
        stage.row(&format!("under load: lane job, {kind}"));
    }
    if let Some(e) = &s.first_error {
        println!("  first error: {e}");
    }
    let errors: u64 = s.errors.iter().sum();
    anyhow::ensure!(errors == 0, "{errors} failed requests");
    Ok(())
}

/// The in-process swap taken apart, a window each: its CPU without the swap (parse and compile every
/// `interval`, the result dropped), first at ordinary priority on the blocking pool (what the sources did before
/// the config lanes), then on the config lanes; then the swap without its CPU (snapshots compiled before the
/// window, one stored every `interval`). Which windows' latency rises says what a spike is made of. Returns the
/// three windows' stage times.
#[allow(clippy::too_many_arguments)]
async fn decompose(
    k: &Knobs,
    live: &Arc<Live<Snapshot>>,
    spec: &WaypointSpec,
    texts: &[Arc<str>],
    mut i: usize,
    cache: &Arc<Mutex<ParseCache>>,
    load: &Load,
    swaps: &mut [u64; PHASES],
) -> anyhow::Result<[Stage; 3]> {
    let mut stages: [Stage; 3] = Default::default();
    for (n, phase) in [Phase::CompileNormal, Phase::CompileLanes]
        .into_iter()
        .enumerate()
    {
        stages[n] = paced_window(k, load, phase, swaps, || {
            let (s, text, c) = (spec.clone(), texts[i % 2].clone(), cache.clone());
            i += 1;
            Some(move || {
                let t = Instant::now();
                if n == 0 {
                    drop(compile(&parse_cached(&text, &c), &s).expect("compiles"));
                } else {
                    // Freed where a swap frees the snapshot it replaces: on the reaper's idle lane.
                    background::drop_idle(prepare(&text, &s, &c).0);
                }
                t.elapsed()
            })
        })
        .await?;
    }
    let n = (k.window.as_millis() / k.interval.as_millis().max(1)) as usize + 2;
    let (s, t, c) = (spec.clone(), texts.to_vec(), cache.clone());
    let ready: Vec<Snapshot> = tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|j| compile(&parse_cached(&t[(i + j) % 2], &c), &s).expect("compiles"))
            .collect()
    })
    .await?;
    tokio::time::sleep(SETTLE).await;

    let mut ready = ready.into_iter();
    stages[2] = paced_window(k, load, Phase::StoreOnly, swaps, || {
        let (l, snap) = (live.clone(), ready.next()?);
        Some(move || {
            let t = Instant::now();
            l.store(snap);
            t.elapsed()
        })
    })
    .await?;
    tokio::task::spawn_blocking(move || drop(ready)).await?;
    Ok(stages)
}

/// A window per [`Kind`] of compile stand-in, one job on the config lanes every `interval` (see
/// `swap/interfere.rs`); returns each window's job wall times.
async fn stand_in_windows(
    k: &Knobs,
    stand_ins: &Arc<Calibrated>,
    load: &Load,
    swaps: &mut [u64; PHASES],
) -> anyhow::Result<[Stage; 4]> {
    let mut stages: [Stage; 4] = Default::default();
    let kinds = [
        (Kind::Spin, Phase::LaneSpin),
        (Kind::SpinYielding, Phase::LaneSpinYielding),
        (Kind::Sweep, Phase::LaneSweep),
        (Kind::Churn, Phase::LaneChurn),
    ];
    for (stage, (kind, phase)) in stages.iter_mut().zip(kinds) {
        *stage = paced_window(k, load, phase, swaps, || {
            let s = stand_ins.clone();
            Some(move || s.run(kind))
        })
        .await?;
    }
    Ok(stages)
}

/// One `k.window` of traffic filed under `phase`: every `k.interval`, the next job from `next_job` runs on the
/// blocking pool (the window ends early when there is none) and its returned duration is filed; each counts as a
/// swap of `phase`. Then the traffic is filed under warm-up while the last job's effects settle.
async fn paced_window<J>(
    k: &Knobs,
    load: &Load,
    phase: Phase,
    swaps: &mut [u64; PHASES],
    mut next_job: impl FnMut() -> Option<J>,
) -> anyhow::Result<Stage>
where
    J: FnOnce() -> Duration + Send + 'static,
{
    let mut stage = Stage::default();
    load.set(phase);
    let end = Instant::now() + k.window;
    while Instant::now() < end {
        let next = Instant::now() + k.interval;
        let Some(job) = next_job() else { break };
        stage.0.push(tokio::task::spawn_blocking(job).await?);
        swaps[phase as usize] += 1;
        tokio::time::sleep_until(next.into()).await;
    }
    load.set(Phase::Warmup);
    tokio::time::sleep(SETTLE).await;
    Ok(stage)
}

/// A thread noting when `live`'s generation passes `before` (checked every 100 µs, for [`PATIENCE`]).
fn poll_generation(
    live: Arc<Live<Snapshot>>,
    before: u64,
) -> std::thread::JoinHandle<Option<Instant>> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if live.generation() > before {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        None
    })
}
