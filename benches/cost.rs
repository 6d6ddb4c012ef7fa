//! What sidekey costs, against nginx doing the same header swap, on the same
//! machine in the same run (design.md, "Cost").
//!
//! `cargo bench --bench cost` (needs `nginx` and `wrk` on PATH: Debian's
//! `nginx-light` and `wrk`). Prints, for a direct call, sidekey and nginx:
//!
//! 1. throughput and CPU per request at 64 connections (wrk, closed loop),
//!    with access logs off and on (sidekey's as text, then as JSON, the
//!    chart's default; nginx's in its default format both times): the
//!    rows take turns of two seconds, `BENCH_ROUNDS` (default 3) ×
//!    `BENCH_SECS` / 2 turns each, and the table gives the median with
//!    its quartiles of each row's requests a second and CPU, and of those
//!    divided by nginx's in the same turn (paired ratios: steadier than
//!    the ratio of two medians on a shared machine; [`throughput`]);
//!    with logs off also sidekey built without its profile, the hyper
//!    floor (the cheapest hyper proxy doing the same swap, [`floor`]) and
//!    sidekey on a route with a fallback key and a model allowlist (the
//!    body read, checked and kept for a retry);
//! 2. CPU per request at a fixed 5,000 req/s (open loop): every proxy sees
//!    the same arrival pattern, so this is the fairest cost comparison; the
//!    rows take turns as in section 1 ([`open_loop`]);
//! 3. added latency (p50/p99) at a fixed 1,000 req/s, the floor included:
//!    the rows take turns in one-second slices, `BENCH_ROUNDS` ×
//!    `BENCH_SECS` each, and the percentiles are over the slices in which
//!    the VM's host took no CPU time from either CPU (steal), with the p99
//!    over all slices beside ([`latency`]);
//! 4. resident memory at start, idle after the load above (upstream
//!    connections kept warm), and with 1,000 open streams ("start" is after
//!    the first request, which the setup sends to check each route);
//! 5. time to the first server-sent event, versus a direct call;
//! 6. 1,000 open idle WebSockets through sidekey: its RSS and CPU.
//!
//! `BENCH_ONLY=1,3` runs those sections alone (section 4's "idle after
//! load" is then after whatever load ran).
//!
//! "sidekey" is the binary as its image is built: with the profile
//! `link/sidekey.profdata` (profile-guided optimisation), which the bench
//! builds first into `target/pgo` ([`released_sidekey`]). "sidekey, no
//! profile" is the same code from a plain `cargo build --release`, as the
//! floor is built.
//!
//! Layout: both proxies run pinned to CPU 0 with one worker (sidekey:
//! `--worker-threads 1`; nginx: one process); the upstream (a minimal
//! HTTPS/1.1 server in its own process for the request benchmarks,
//! [`upstream`], which answers with the head nginx's `return 200` sends; an
//! in-process Rust server for the streams) and the load generators run on
//! CPU 1. Section 1 prints how busy each proxy kept its core: near 100 %,
//! its requests a second are the proxy's. Sections 1-3 count a slice as
//! quiet when the VM's host took (steal) at most 1 % of the CPUs' time
//! during it (sections 1 and 2) or not a tick (section 3), and give their
//! figures over the quiet slices. Both proxies talk TLS to the
//! upstream over pooled keep-alive connections and swap `Authorization` for
//! the configured key, removing the other credential headers. Everything stays
//! on 127.0.0.1 and every loop is bounded in time (`BENCH_SECS`, default 10).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods,
    clippy::disallowed_types,
    missing_docs,
    reason = "a benchmark driver: it reads its environment, prints, and fails loudly"
)]

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Channel, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;

const KEY: &str = "sk-bench-0123456789abcdefghijklmnopqrstuvwxyz";
const BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hi"}]}"#;
const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}"#;
const STREAMS: usize = 1000;
/// Where nginx sits among the rows of sections 1 and 2: the other rows'
/// figures are divided by its, turn by turn.
const NGINX_ROW: usize = 1;
/// How long each row of sections 1 and 2 runs before the next takes its
/// turn.
const TURN: Duration = Duration::from_secs(2);
/// A turn of sections 1 and 2 is quiet when the host took at most 1 % of
/// the two CPUs' time during it (4 of their 400 ticks): its requests a
/// second and CPU move by about as much, where a p99 (section 3) moves
/// with a single tick.
const QUIET_TICKS: u64 = 4;
/// The client credential headers both nginx and the floor clear, besides
/// `Authorization`, which they overwrite (sidekey strips these and more).
const CLIENT_CREDENTIALS: [&str; 8] = [
    "Proxy-Authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
    "x-sidekey-token",
];

#[path = "cost/floor.rs"]
mod floor;
#[path = "cost/upstream.rs"]
mod upstream;

fn main() {
    // The floor proxy's own process (started by `setup`, pinned to CPU 0).
    if let Ok(spec) = std::env::var(floor::ENV) {
        floor::run(&spec, KEY);
        return;
    }
    // The upstream's own process (started by `setup`, pinned to CPU 1).
    if let Ok(spec) = std::env::var(upstream::ENV) {
        upstream::run(&spec, ANSWER);
        return;
    }
    // Pin this process (load generators, stream upstream) to CPU 1 and give
    // it room for thousands of sockets, by re-executing under taskset.
    if std::env::var_os("SIDEKEY_BENCH_CHILD").is_none() {
        let exe = std::env::current_exe().unwrap();
        let args: Vec<String> = std::env::args().skip(1).collect();
        let status = Command::new("sh")
            .arg("-c")
            .arg("ulimit -n 20000 2>/dev/null; exec taskset -c 1 \"$0\" \"$@\"")
            .arg(exe)
            .args(args)
            .env("SIDEKEY_BENCH_CHILD", "1")
            .status()
            .expect("taskset (util-linux) is needed");
        std::process::exit(status.code().unwrap_or(1));
    }
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(Duration::from_secs(secs)));
}

struct Setup {
    _dir: tempfile::TempDir,
    upstream: Proc,
    /// sidekey as released: built with `link/sidekey.profdata`.
    released: PathBuf,
    sidekey: Proc,
    /// The same code without the profile ([`released_sidekey`]).
    unprofiled: Proc,
    nginx: Proc,
    /// The cheapest hyper proxy doing the same swap ([`floor`]).
    floor: Proc,
    /// `https://localhost:P` of the upstream ([`upstream`]).
    upstream_url: String,
    stream_url: String,
    sidekey_url: String,
    unprofiled_url: String,
    nginx_url: String,
    floor_url: String,
    /// Through sidekey on a route with a fallback key and a model
    /// allowlist: the body is read, checked and kept for a retry.
    fallback_url: String,
    /// `ws://127.0.0.1:P/ws/...` through sidekey to a WebSocket upstream.
    ws_url: String,
}

async fn run(secs: Duration) {
    for tool in ["nginx", "wrk"] {
        if Command::new(tool)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            eprintln!(
                "{tool} is not on PATH: install Debian's nginx-light and wrk to run this comparison"
            );
            std::process::exit(2);
        }
    }
    let mut s = setup().await;
    // Before the load (after one request each, which `setup` waits for):
    // what a pod pays for an idle sidecar.
    let at_start = [
        (s.sidekey.rss_mib(), s.sidekey.anon_mib()),
        (s.nginx.rss_mib(), s.nginx.anon_mib()),
    ];
    println!(
        "sidekey cost benchmark: {}s per measurement, proxies pinned to CPU 0, one worker each\n",
        secs.as_secs()
    );

    // On a shared machine one round can be far off: more rounds, a steadier
    // median (the range is printed beside it).
    let rounds_n: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    // `BENCH_ONLY=1,3`: those sections alone (the setup is the same).
    let only: Vec<u8> = std::env::var("BENCH_ONLY").map_or_else(
        |_| (1..=6).collect(),
        |v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
    );
    if only.contains(&1) {
        throughput(&mut s, secs, rounds_n).await;
    }
    if only.contains(&2) {
        open_loop(&s, secs, rounds_n).await;
    }
    if only.contains(&3) {
        latency(&s, secs, rounds_n).await;
    }
    if only.contains(&4) {
        memory(&s, at_start).await;
    }
    if only.contains(&5) {
        first_events(&s).await;
    }
    if only.contains(&6) {
        websockets(&s, secs).await;
    }
    drop(s.upstream);
}

/// Section 1: requests a second and CPU per request at 64 connections,
/// closed loop, with logs off and on.
///
/// The rows take turns of [`TURN`], `BENCH_ROUNDS` × `BENCH_SECS` / 2 turns
/// each, and each row's figure is divided by nginx's in the same turn, two
/// to eight seconds apart: the host's interference on a shared VM changes
/// within seconds, and the closer two measurements are, the more of it
/// they share. A slice counts as quiet when the host took at most 1 % of
/// the CPUs' time during it ([`QUIET_TICKS`]); the figures are over the
/// quiet slices, and the ratios over the turns in which both the row's and
/// nginx's slices were quiet (all of them, when fewer than three were).
async fn throughput(s: &mut Setup, secs: Duration, rounds_n: usize) {
    let turns = turn_count(secs, rounds_n);
    println!(
        "1. Throughput and CPU per request at 64 connections, POST chat completion (wrk; the rows take {turns} turns of {} s; medians, quartiles in brackets)",
        TURN.as_secs()
    );
    println!(
        "   {:<24} {:>8} {:>18} {:>6} {:>18} {:>18} {:>10} {:>10} {:>7}",
        "", "req/s", "req/s × nginx", "busy", "CPU µs/req", "CPU × nginx", "p50", "p99", "quiet"
    );
    let _ = wrk(&s.upstream_url, Duration::from_secs(1), None).await;
    let direct = wrk(&s.upstream_url, secs, None).await;
    println!(
        "   {:<24} {:>8.0} {:>18} {:>6} {:>18} {:>18} {:>10} {:>10}",
        "direct (upstream)", direct.rps, "-", "-", "-", "-", direct.p50, direct.p99
    );
    for logs in [None, Some("text"), Some("json")] {
        set_logging(s, logs);
        let (ours, theirs) = match logs {
            None => ("sidekey (logs off)", "nginx (logs off)"),
            Some("text") => ("sidekey (logs text)", "nginx (logs on)"),
            Some(_) => ("sidekey (logs json)", "nginx (logs on)"),
        };
        // With logs on only the two proxies that have them; the floor logs
        // nothing and the fallback route is about the body, not the log.
        let mut rows = vec![
            (ours, &s.sidekey_url, &s.sidekey),
            // At NGINX_ROW.
            (theirs, &s.nginx_url, &s.nginx),
        ];
        if logs.is_none() {
            rows.push(("sidekey, no profile", &s.unprofiled_url, &s.unprofiled));
            rows.push(("hyper floor", &s.floor_url, &s.floor));
            rows.push(("sidekey fallback+models", &s.fallback_url, &s.sidekey));
        }
        for (_, url, _) in &rows {
            let _ = wrk(url, Duration::from_secs(1), None).await;
        }
        // Turn by turn, row by row: the result and whether its slice was quiet.
        let mut turns_run: Vec<Vec<(WrkResult, bool)>> = Vec::new();
        for _ in 0..turns {
            let mut turn = Vec::new();
            for (_, url, proc) in &rows {
                let steal = CpuSteal::now();
                let r = wrk(url, TURN, Some(proc)).await;
                turn.push((r, steal.since() <= QUIET_TICKS));
            }
            turns_run.push(turn);
        }
        for (i, (label, _, _)) in rows.iter().enumerate() {
            let row = |pick: fn(&WrkResult) -> Option<f64>, by: Option<usize>| {
                over_turns(&turns_run, i, by, pick)
            };
            let (_, rps, _) = row(|r| Some(r.rps), None);
            let rps_ratio = row(|r| Some(r.rps), Some(NGINX_ROW));
            let cpu = row(|r| r.cpu_us_per_req, None);
            let cpu_ratio = row(|r| r.cpu_us_per_req, Some(NGINX_ROW));
            let (_, busy, _) = row(|r| r.busy, None);
            // wrk's percentiles from the turn with the median requests a second.
            let mut by_rps: Vec<&WrkResult> = turns_run.iter().map(|t| &t[i].0).collect();
            by_rps.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            let mid = by_rps[by_rps.len() / 2];
            let quiet = turns_run.iter().filter(|t| t[i].1).count();
            println!(
                "   {label:<24} {rps:>8.0} {:>18} {:>6} {:>18} {:>18} {:>10} {:>10} {:>7}",
                with_quartiles(rps_ratio, 2),
                format!("{busy:.0} %"),
                with_quartiles(cpu, 1),
                with_quartiles(cpu_ratio, 2),
                mid.p50,
                mid.p99,
                format!("{quiet}/{turns}"),
            );
        }
    }
    set_logging(s, None);
}

/// How many turns of [`TURN`] each row of sections 1 and 2 takes:
/// `BENCH_ROUNDS` × `BENCH_SECS` / 2.
fn turn_count(secs: Duration, rounds_n: usize) -> usize {
    (rounds_n * secs.as_secs() as usize / TURN.as_secs() as usize).max(1)
}

/// The quartiles of row `i`'s figure (`pick`) over the turns in which its
/// slice was quiet or, with `by`, of its figure divided by row `by`'s in
/// the same turn, over the turns in which both were quiet. Over all the
/// turns when fewer than three were quiet.
fn over_turns<T>(
    turns: &[Vec<(T, bool)>],
    i: usize,
    by: Option<usize>,
    pick: impl Fn(&T) -> Option<f64>,
) -> (f64, f64, f64) {
    let of = |t: &Vec<(T, bool)>| {
        let divisor = match by {
            Some(b) => pick(&t[b].0)?,
            None => 1.0,
        };
        Some(pick(&t[i].0)? / divisor)
    };
    let quiet: Vec<f64> = turns
        .iter()
        .filter(|t| t[i].1 && by.is_none_or(|b| t[b].1))
        .filter_map(of)
        .collect();
    if quiet.len() >= 3 {
        quartiles(quiet)
    } else {
        quartiles(turns.iter().filter_map(of).collect())
    }
}

/// "median (lower quartile-upper quartile)".
fn with_quartiles((lo, mid, hi): (f64, f64, f64), digits: usize) -> String {
    format!("{mid:.digits$} ({lo:.digits$}-{hi:.digits$})")
}

/// Section 2: CPU per request at a fixed 5,000 req/s, the rows taking
/// turns as in section 1.
async fn open_loop(s: &Setup, secs: Duration, rounds_n: usize) {
    let turns = turn_count(secs, rounds_n);
    println!(
        "\n2. CPU per request at a fixed 5,000 req/s (open loop, 64 connections; the rows take {turns} turns of {} s; medians, quartiles in brackets)",
        TURN.as_secs()
    );
    println!(
        "   {:<24} {:>18} {:>18} {:>10} {:>10} {:>7}",
        "", "CPU µs/req", "CPU × nginx", "p50 µs", "p99 µs", "quiet"
    );
    let rows = [
        ("sidekey", &s.sidekey_url, &s.sidekey),
        // At NGINX_ROW.
        ("nginx", &s.nginx_url, &s.nginx),
        ("hyper floor", &s.floor_url, &s.floor),
        ("sidekey fallback+models", &s.fallback_url, &s.sidekey),
    ];
    let clients = warmed_clients(rows.iter().map(|r| r.1), 64).await;
    // Turn by turn, row by row: CPU µs a request and whether the slice
    // was quiet; and each row's latencies in its quiet slices.
    let mut turns_run: Vec<Vec<(f64, bool)>> = Vec::new();
    let mut quiet_lat = vec![Vec::new(); rows.len()];
    for _ in 0..turns {
        let mut turn = Vec::new();
        for (i, (client, (_, url, proc))) in clients.iter().zip(&rows).enumerate() {
            let steal = CpuSteal::now();
            let before = proc.cpu_secs();
            let lat = at_rate(client, url, TURN, 5000, 64).await;
            let cpu = (proc.cpu_secs() - before) / lat.len() as f64 * 1e6;
            let quiet = steal.since() <= QUIET_TICKS;
            if quiet {
                quiet_lat[i].extend(lat);
            }
            turn.push((cpu, quiet));
        }
        turns_run.push(turn);
    }
    for (i, (name, _, _)) in rows.iter().enumerate() {
        let cpu = over_turns(&turns_run, i, None, |c| Some(*c));
        let ratio = over_turns(&turns_run, i, Some(NGINX_ROW), |c| Some(*c));
        let (p50, p99) = percentiles(&mut quiet_lat[i]);
        let quiet = turns_run.iter().filter(|t| t[i].1).count();
        println!(
            "   {name:<24} {:>18} {:>18} {p50:>10.0} {p99:>10.0} {:>7}",
            with_quartiles(cpu, 1),
            with_quartiles(ratio, 2),
            format!("{quiet}/{turns}"),
        );
    }
}

/// Section 3: added latency at a fixed 1,000 req/s.
///
/// On a VM a latency tail is mostly the host's: the few milliseconds in
/// which it runs something else on one of our CPUs (steal) hold up every
/// request in flight. Measured one proxy after the other, ten seconds
/// each, whichever proxy's turn caught a burst read a p99 of milliseconds.
/// So the rows take turns in one-second slices, a slice counts as quiet
/// when neither CPU lost a tick to the host during it ([`CpuSteal`]), and
/// the percentiles are over each row's quiet slices, with the p99 over all
/// of its slices beside them.
async fn latency(s: &Setup, secs: Duration, rounds_n: usize) {
    let slices = rounds_n * secs.as_secs().max(1) as usize;
    println!(
        "\n3. Latency at a fixed 1,000 req/s (open loop, 16 connections; the rows take turns in {slices} one-second slices each)"
    );
    println!(
        "   {:<22} {:>8} {:>8} {:>10} {:>10} {:>13} {:>10}",
        "", "p50 µs", "p99 µs", "added p50", "added p99", "quiet slices", "p99, all"
    );
    let rows = [
        ("direct (upstream)", &s.upstream_url),
        ("sidekey", &s.sidekey_url),
        ("nginx", &s.nginx_url),
        ("hyper floor", &s.floor_url),
    ];
    let clients = warmed_clients(rows.iter().map(|r| r.1), 16).await;
    // Latencies in µs, row by row: of the quiet slices, and of all.
    let mut quiet = vec![Vec::new(); rows.len()];
    let mut all = vec![Vec::new(); rows.len()];
    let mut kept = vec![0; rows.len()];
    for _ in 0..slices {
        for (i, (client, (_, url))) in clients.iter().zip(&rows).enumerate() {
            let steal = CpuSteal::now();
            let lat = at_rate(client, url, Duration::from_secs(1), 1000, 16).await;
            if steal.since() == 0 {
                quiet[i].extend_from_slice(&lat);
                kept[i] += 1;
            }
            all[i].extend(lat);
        }
    }
    let (d50, d99) = percentiles(&mut quiet[0]);
    // A row without a quiet slice has no figures: "-", not NaN.
    let us = |v: f64| {
        if v.is_nan() {
            "-".to_string()
        } else {
            format!("{v:.0}")
        }
    };
    for (i, (name, _)) in rows.iter().enumerate() {
        let (p50, p99) = percentiles(&mut quiet[i]);
        let (_, p99_all) = percentiles(&mut all[i]);
        let (a50, a99) = if i == 0 {
            ("-".to_string(), "-".to_string())
        } else {
            (us(p50 - d50), us(p99 - d99))
        };
        let (p50, p99) = (us(p50), us(p99));
        let kept = format!("{}/{slices}", kept[i]);
        println!("   {name:<22} {p50:>8} {p99:>8} {a50:>10} {a99:>10} {kept:>13} {p99_all:>10.0}");
    }
}

/// Section 4: resident memory at start, idle, and with 1,000 open streams.
async fn memory(s: &Setup, at_start: [(f64, f64); 2]) {
    println!("\n4. Resident memory");
    println!("   RSS in MiB, its anonymous part (the process's own memory) in brackets");
    println!(
        "   {:<22} {:>14} {:>18} {:>22}",
        "",
        "start",
        "idle after load",
        &format!("{STREAMS} open streams")
    );
    for ((name, url, proc), (start, start_anon)) in [
        ("sidekey", &s.sidekey_url, &s.sidekey),
        ("nginx", &s.nginx_url, &s.nginx),
    ]
    .into_iter()
    .zip(at_start)
    {
        // After sections 1-3: upstream connections kept warm for reuse.
        let (idle, idle_anon) = (proc.rss_mib(), proc.anon_mib());
        let busy = open_streams(url, STREAMS, proc).await;
        let start = format!("{start:.1} ({start_anon:.1})");
        let idle = format!("{idle:.1} ({idle_anon:.1})");
        println!("   {name:<22} {start:>14} {idle:>18} {busy:>22.1}");
    }
}

/// Section 5: time to the first server-sent event.
async fn first_events(s: &Setup) {
    println!("\n5. Time to the first server-sent event (200 sequential streams)");
    println!(
        "   {:<22} {:>10} {:>10} {:>14}",
        "", "p50 µs", "p99 µs", "added p50 µs"
    );
    let direct = first_event(&s.stream_url, 200).await;
    println!(
        "   {:<22} {:>10.0} {:>10.0} {:>14}",
        "direct (upstream)", direct.0, direct.1, "-"
    );
    for (name, url) in [("sidekey", &s.sidekey_url), ("nginx", &s.nginx_url)] {
        let r = first_event(&format!("{url}/stream"), 200).await;
        println!(
            "   {name:<22} {:>10.0} {:>10.0} {:>14.0}",
            r.0,
            r.1,
            r.0 - direct.0
        );
    }
}

/// Section 6: 1,000 idle WebSockets through sidekey.
async fn websockets(s: &Setup, secs: Duration) {
    println!("\n6. {STREAMS} open idle WebSockets through sidekey");
    println!(
        "   {:<22} {:>10} {:>18} {:>22}",
        "", "before MiB", "with sockets MiB", "CPU % of a core, idle"
    );
    let idle = s.sidekey.rss_mib();
    let (rss, cpu) = open_websockets(&s.ws_url, STREAMS, &s.sidekey, secs).await;
    println!("   {:<22} {idle:>10.1} {rss:>18.1} {cpu:>22.2}", "sidekey");
}

// === setup ===

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca_pem, cert_pem, key_pem) = certificates();
    {
        use rustls::pki_types::pem::PemObject;
        let ca = rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap();
        BENCH_CA.set(vec![ca]).unwrap();
    }
    std::fs::write(d.join("ca.pem"), &ca_pem).unwrap();
    std::fs::write(d.join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(d.join("key.pem"), &key_pem).unwrap();
    std::fs::write(d.join("openai-key"), format!("{KEY}\n")).unwrap();

    let up_port = free_port();
    let upstream = own_process(1, upstream::ENV, format!("{up_port} {}", d.display()), d);
    let stream_addr = stream_upstream(&cert_pem, &key_pem).await;
    let ws_addr = ws_upstream().await;
    let stream_url = format!("https://{stream_addr}");

    let routes = format!(
        "ca_file = \"{ca}\"\n\
         [routes.openai]\ntype = \"openai\"\nupstream = \"https://localhost:{up_port}\"\nkey = \"path::{key}\"\n\
         [routes.stream]\ntype = \"openai\"\nupstream = \"{stream_url}\"\nkey = \"path::{key}\"\n\
         [routes.ws]\ntype = \"openai\"\nupstream = \"http://{ws_addr}\"\nkey = \"path::{key}\"\n\
         [routes.fallback]\ntype = \"openai\"\nupstream = \"https://localhost:{up_port}\"\n\
         key = {{ default = \"path::{key}\", fallback = \"path::{key}\" }}\nmodels = [\"gpt-4o-mini\"]\n",
        ca = d.join("ca.pem").display(),
        key = d.join("openai-key").display(),
    );
    // `name.toml`: the routes above, on ports of its own.
    let config = |name: &str| {
        let (port, admin) = (free_port(), free_port());
        let listen =
            format!("listen = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n");
        std::fs::write(d.join(format!("{name}.toml")), listen + &routes).unwrap();
        port
    };
    let sk_port = config("sidekey");
    let released = released_sidekey();
    let sidekey = sidekey_proc(&released, d, "sidekey", None);
    // The same code from a plain `cargo build --release` (no profile),
    // beside it: what the profile is worth.
    let np_port = config("unprofiled");
    let unprofiled = sidekey_proc(
        Path::new(env!("CARGO_BIN_EXE_sidekey")),
        d,
        "unprofiled",
        None,
    );
    let ng_port = free_port();
    let nginx_proxy = nginx(
        d,
        "proxy",
        &proxy_conf(d, ng_port, up_port, stream_addr, false),
    );

    let floor_port = free_port();
    let floor = own_process(
        0,
        floor::ENV,
        format!("{floor_port} {up_port} {}", d.join("ca.pem").display()),
        d,
    );

    let s = Setup {
        _dir: dir,
        upstream,
        released,
        sidekey,
        unprofiled,
        nginx: nginx_proxy,
        floor,
        upstream_url: format!("https://localhost:{up_port}/v1/chat/completions"),
        stream_url: format!("{stream_url}/v1/chat/completions"),
        sidekey_url: format!("http://127.0.0.1:{sk_port}/openai/v1/chat/completions"),
        unprofiled_url: format!("http://127.0.0.1:{np_port}/openai/v1/chat/completions"),
        nginx_url: format!("http://127.0.0.1:{ng_port}/openai/v1/chat/completions"),
        floor_url: format!("http://127.0.0.1:{floor_port}/openai/v1/chat/completions"),
        fallback_url: format!("http://127.0.0.1:{sk_port}/fallback/v1/chat/completions"),
        ws_url: format!("ws://127.0.0.1:{sk_port}/ws/v1/realtime?model=gpt-realtime"),
    };
    for url in [
        &s.upstream_url,
        &s.sidekey_url,
        &s.unprofiled_url,
        &s.nginx_url,
        &s.floor_url,
        &s.fallback_url,
    ] {
        wait_ok(url, s._dir.path()).await;
    }
    s
}

/// A process that is killed when dropped.
struct Proc {
    child: Child,
    dir: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// A stand-in while a real process is being replaced (`true` exits at once).
    fn placeholder() -> Self {
        let child = Command::new("true").spawn().unwrap();
        Self {
            child,
            dir: PathBuf::new(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// utime + stime in seconds.
    fn cpu_secs(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let (_, after_comm) = stat.rsplit_once(')').unwrap();
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        // Fields 14 and 15 of /proc/PID/stat: utime and stime, in clock ticks.
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    fn rss_mib(&self) -> f64 {
        self.status_mib("VmRSS:")
    }

    /// The anonymous part of the RSS: the process's own memory, as opposed
    /// to the pages of its binary and libraries, which every process of the
    /// same image shares through the page cache.
    fn anon_mib(&self) -> f64 {
        self.status_mib("RssAnon:")
    }

    fn status_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap();
        kb / 1024.0
    }
}

/// sidekey (`bin`) with `dir/{name}.toml`, access logs off (`None`) or on
/// in the given format.
fn sidekey_proc(bin: &Path, dir: &Path, name: &str, logs: Option<&str>) -> Proc {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(bin)
        .args(["--worker-threads", "1", "--config"])
        .arg(dir.join(format!("{name}.toml")))
        .args(["--log-format", logs.unwrap_or("text")])
        .env_clear()
        .env("SIDEKEY_LOG", if logs.is_some() { "info" } else { "warn" })
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc {
        child,
        dir: dir.to_path_buf(),
    }
}

/// sidekey as its image is built (deploy/Dockerfile): the release profile
/// with `-Cprofile-use=link/sidekey.profdata` (profile-guided optimisation,
/// see `scripts/pgo-profile`), in `target/pgo`. The bench's own build of the
/// binary (`CARGO_BIN_EXE_sidekey`) is the same code without the profile.
fn released_sidekey() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target").join("pgo");
    eprintln!(
        "building sidekey as released (with link/sidekey.profdata) in {}",
        target.display()
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--bin",
            "sidekey",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(root)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env(
            "RUSTFLAGS",
            format!(
                "-Cprofile-use={}",
                root.join("link/sidekey.profdata").display()
            ),
        )
        .status()
        .unwrap();
    assert!(status.success(), "the profiled build failed");
    target.join("release").join("sidekey")
}

/// Turns access logs on (sidekey's in the given format) or off by
/// restarting both proxies with the setting.
fn set_logging(s: &mut Setup, logs: Option<&str>) {
    let on = logs.is_some();
    let dir = s.sidekey.dir.clone();
    // Drop the old processes first: they hold the ports.
    s.sidekey = Proc::placeholder();
    s.nginx = Proc::placeholder();
    s.sidekey = sidekey_proc(&s.released, &dir, "sidekey", logs);
    let conf = std::fs::read_to_string(dir.join("nginx-proxy.conf")).unwrap();
    let conf = conf
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("access_log") && l.starts_with("    access_log") {
                if on {
                    format!("    access_log {}/access.log;", dir.display())
                } else {
                    "    access_log off;".to_owned()
                }
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    s.nginx = nginx(&dir, "proxy", &conf);
    std::thread::sleep(Duration::from_millis(500));
}

/// This bench's own binary as another role (`var` set to `spec`: the floor,
/// the upstream), pinned to `cpu`.
fn own_process(cpu: u8, var: &str, spec: String, dir: &Path) -> Proc {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(var, spec);
    pinned(cpu, &cmd, dir)
}

/// nginx with `conf`, on CPU 0 beside the other proxies.
fn nginx(dir: &Path, name: &str, conf: &str) -> Proc {
    let path = dir.join(format!("nginx-{name}.conf"));
    std::fs::write(&path, conf).unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-c").arg(&path);
    pinned(0, &cmd, dir)
}

/// Starts `cmd` (its program, arguments and environment) under `taskset`
/// on `cpu`, its output discarded.
fn pinned(cpu: u8, cmd: &Command, dir: &Path) -> Proc {
    let child = Command::new("taskset")
        .args(["-c", &cpu.to_string()])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Proc {
        child,
        dir: dir.to_path_buf(),
    }
}

fn nginx_common(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nuser root;\npid {d}/{name}.pid;\nerror_log {d}/{name}-error.log error;\n\
         worker_rlimit_nofile 20000;\nevents {{ worker_connections 8192; }}\n"
    )
}

fn temp_paths(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "    client_body_temp_path {d}/cb; proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft;\n\
         \x20   uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;\n"
    )
}

/// nginx doing what sidekey does: strip client credentials and hop-by-hop
/// headers, set the key, forward over pooled TLS, stream without buffering.
fn proxy_conf(dir: &Path, port: u16, up_port: u16, stream: SocketAddr, logs: bool) -> String {
    let d = dir.display();
    let access = if logs {
        format!("access_log {d}/access.log;")
    } else {
        "access_log off;".to_owned()
    };
    let strip = CLIENT_CREDENTIALS.iter().fold(String::new(), |mut s, h| {
        let _ = writeln!(s, "        proxy_set_header {h} \"\";");
        s
    });
    let location = |path: &str, upstream: &str, host: &str| {
        format!(
            "    location /{path}/ {{\n        proxy_pass https://{upstream}/;\n        proxy_http_version 1.1;\n\
             \x20       proxy_set_header Connection \"\";\n        proxy_set_header Host {host};\n\
             \x20       proxy_set_header Authorization \"Bearer {KEY}\";\n{strip}\
             \x20       proxy_ssl_trusted_certificate {d}/ca.pem;\n        proxy_ssl_verify on;\n        proxy_ssl_name localhost;\n\
             \x20       proxy_ssl_session_reuse on;\n        proxy_buffering off;\n        proxy_request_buffering off;\n    }}\n"
        )
    };
    format!(
        "{}http {{\n    {access}\n{}    keepalive_requests 1000000;\n\
         \x20   upstream provider {{ server 127.0.0.1:{up_port}; keepalive 128; }}\n\
         \x20   upstream streams {{ server {stream}; keepalive 128; }}\n\
         \x20   server {{\n        listen 127.0.0.1:{port} backlog=4096;\n{}{}    }}\n}}\n",
        nginx_common(dir, "proxy"),
        temp_paths(dir),
        location("openai", "provider", &format!("localhost:{up_port}")),
        location("stream", "streams", &stream.to_string()),
    )
}

fn certificates() -> (String, String, String) {
    // Distinct subject names: OpenSSL takes a leaf whose issuer equals its
    // subject for a self-signed certificate.
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "sidekey bench CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "bench upstream");
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    (ca_cert.pem(), leaf_cert.pem(), leaf_key.serialize_pem())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_ok(url: &str, dir: &Path) {
    let client = https_client();
    let mut last = String::new();
    for _ in 0..200 {
        match client.request(post(url)).await {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => {
                let status = r.status();
                let body = r
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                last = format!("{status}: {}", String::from_utf8_lossy(&body));
            }
            Err(e) => last = format!("{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs: String = ["sidekey.log", "proxy-error.log", "upstream-error.log"]
        .iter()
        .map(|f| {
            format!(
                "--- {f}\n{}\n",
                std::fs::read_to_string(dir.join(f)).unwrap_or_default()
            )
        })
        .collect();
    panic!("{url} never answered 200; last: {last}\n{logs}");
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

fn https_client() -> HttpsClient {
    let mut roots = rustls::RootCertStore::empty();
    for cert in BENCH_CA.get().into_iter().flatten() {
        roots.add(cert.clone()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(2000)
        .build(https)
}

/// The benchmark's CA, generated in `setup`, trusted by its clients.
static BENCH_CA: std::sync::OnceLock<Vec<rustls::pki_types::CertificateDer<'static>>> =
    std::sync::OnceLock::new();

fn post(url: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer dummy")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap()
}

// === 1. wrk ===

struct WrkResult {
    rps: f64,
    p50: String,
    p99: String,
    cpu_us_per_req: Option<f64>,
    /// The proxy's CPU time over the run's wall time, in %: near 100, the
    /// proxy's core is what bounds `rps`.
    busy: Option<f64>,
}

async fn wrk(url: &str, secs: Duration, proc: Option<&Proc>) -> WrkResult {
    let script = std::env::temp_dir().join("sidekey-bench-post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{BODY}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.headers[\"Authorization\"] = \"Bearer dummy\"\n"
        ),
    )
    .unwrap();
    let before = proc.map(Proc::cpu_secs);
    let t0 = Instant::now();
    let out = tokio::process::Command::new("taskset")
        .args(["-c", "1", "wrk", "-t1", "-c64", "--latency", "-d"])
        .arg(format!("{}s", secs.as_secs()))
        .arg("-s")
        .arg(&script)
        .arg(url)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let after = proc.map(Proc::cpu_secs);
    let wall = t0.elapsed().as_secs_f64();
    let field = |prefix: &str| -> String {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_owned()
    };
    let requests: f64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN);
    let errors = text
        .lines()
        .any(|l| l.contains("Non-2xx") || l.contains("Socket errors"));
    if errors {
        eprintln!("   warning: wrk saw errors for {url}:\n{text}");
    }
    WrkResult {
        rps: field("Requests/sec:").parse().unwrap_or(f64::NAN),
        p50: field("50%"),
        p99: field("99%"),
        cpu_us_per_req: before.zip(after).map(|(b, a)| (a - b) / requests * 1e6),
        busy: before.zip(after).map(|(b, a)| (a - b) / wall * 100.0),
    }
}

// === 2. fixed rate ===

/// A client per URL, each with `conns` connections open to it: one row's
/// client for a whole section, so its slices reuse warm connections.
async fn warmed_clients<'a>(
    urls: impl IntoIterator<Item = &'a String>,
    conns: usize,
) -> Vec<HttpsClient> {
    let mut clients = Vec::new();
    for url in urls {
        let client = https_client();
        warm(&client, url, conns).await;
        clients.push(client);
    }
    clients
}

/// Opens `conns` connections in `client`'s pool to `url`.
async fn warm(client: &HttpsClient, url: &str, conns: usize) {
    let warm: Vec<_> = (0..conns).map(|_| client.request(post(url))).collect();
    for w in warm {
        if let Ok(r) = w.await {
            let _ = r.into_body().collect().await;
        }
    }
}

/// Sends `rate` requests a second to `url` for `secs`, at most `conns` at
/// once, whether or not earlier ones were answered (an open loop). Returns
/// the latencies of the successful ones, in µs.
async fn at_rate(
    client: &HttpsClient,
    url: &str,
    secs: Duration,
    rate: u64,
    conns: usize,
) -> Vec<f64> {
    let limit = Arc::new(tokio::sync::Semaphore::new(conns));
    // The runtime's timer ticks in milliseconds: send rate/1000 requests per tick.
    let per_tick = (rate / 1000).max(1);
    let ticks = secs.as_millis() as u64;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..ticks {
        interval.tick().await;
        for _ in 0..per_tick {
            let (client, req, tx, limit) = (client.clone(), post(url), tx.clone(), limit.clone());
            tokio::spawn(async move {
                let Ok(_permit) = limit.acquire_owned().await else {
                    return;
                };
                let sent = Instant::now();
                if let Ok(resp) = client.request(req).await {
                    let ok = resp.status().is_success();
                    let _ = resp.into_body().collect().await;
                    let _ = tx.send((ok, sent.elapsed()));
                }
            });
        }
    }
    drop(tx);
    let mut lat = Vec::with_capacity((rate * secs.as_secs().max(1)) as usize);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Some((ok, d))) = tokio::time::timeout_at(deadline, rx.recv()).await {
        if ok {
            lat.push(d.as_secs_f64() * 1e6);
        }
    }
    lat
}

/// The steal of CPU 0 (the proxies') and CPU 1 (the upstream's and the
/// load's) from a moment on, in the kernel's ticks (USER_HZ: 100 a second).
struct CpuSteal([u64; 2]);

impl CpuSteal {
    fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        // "cpuN user nice system idle iowait irq softirq steal ...".
        let steal = |cpu: &str| {
            stat.lines()
                .find_map(|line| {
                    let mut fields = line.split_whitespace();
                    (fields.next() == Some(cpu)).then(|| fields.nth(7))?
                })
                .and_then(|t| t.parse().ok())
                .unwrap_or(0)
        };
        Self([steal("cpu0"), steal("cpu1")])
    }

    /// The ticks the host took from both CPUs since `self`.
    fn since(&self) -> u64 {
        let now = Self::now().0;
        now.iter()
            .zip(self.0)
            .map(|(n, t)| n.saturating_sub(t))
            .sum()
    }
}

/// The lower quartile, the median and the upper quartile of `values`
/// (NaN when there are none).
fn quartiles(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |q| quantile(&values, q);
    (at(0.25), at(0.5), at(0.75))
}

/// The p50 and p99 of `v` (NaN when it is empty); sorts it.
fn percentiles(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (quantile(v, 0.5), quantile(v, 0.99))
}

/// The `q` quantile of `sorted`, nearest rank (NaN when it is empty).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

// === 4 and 5: streams ===

/// A TLS server on CPU 1 that answers every request with a stream: one event
/// at once, then silence for a minute (bounded), then `[DONE]`.
async fn stream_upstream(cert_pem: &str, key_pem: &str) -> SocketAddr {
    let acceptor = upstream::acceptor(cert_pem, key_pem, &[b"h2", b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    let (mut tx, body) = Channel::<Bytes, Infallible>::new(2);
                    tokio::spawn(async move {
                        let _ = tx
                            .send_data(Bytes::from_static(b"data: {\"first\":true}\n\n"))
                            .await;
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        let _ = tx.send_data(Bytes::from_static(b"data: [DONE]\n\n")).await;
                    });
                    let mut resp = Response::new(body);
                    resp.headers_mut()
                        .insert("content-type", "text/event-stream".parse().unwrap());
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// Opens `n` streams through `url` (`.../stream`), waits for each first
/// event, reads the proxy's RSS, then closes them.
async fn open_streams(url: &str, n: usize, proc: &Proc) -> f64 {
    let url = url.replace("/openai/v1/chat/completions", "/stream/v1/chat/completions");
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(n)
        .build_http();
    let mut bodies = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let reqs: Vec<_> = chunk
            .iter()
            .map(|_| {
                client.request(
                    Request::post(url.as_str())
                        .body(Empty::<Bytes>::new())
                        .unwrap(),
                )
            })
            .collect();
        for r in reqs {
            let mut body = r.await.unwrap().into_body();
            let first = tokio::time::timeout(Duration::from_secs(20), body.frame()).await;
            assert!(matches!(first, Ok(Some(Ok(_)))), "a stream did not start");
            bodies.push(body);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = proc.rss_mib();
    drop(bodies);
    tokio::time::sleep(Duration::from_millis(500)).await;
    rss
}

// === 6: WebSockets ===

/// A plain WebSocket server on CPU 1 that accepts every handshake and holds
/// the socket, silent, until the client goes.
async fn ws_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                use futures_util::StreamExt as _;
                if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                    while let Some(Ok(_)) = ws.next().await {}
                }
            });
        }
    });
    addr
}

/// Opens `n` WebSockets through sidekey, then, with all of them idle for
/// `secs`, reads sidekey's RSS and the CPU it used (percent of one core).
async fn open_websockets(url: &str, n: usize, proc: &Proc, secs: Duration) -> (f64, f64) {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let (ws, resp) = tokio::time::timeout(
            Duration::from_secs(20),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .expect("a WebSocket handshake did not finish in time")
        .expect("a WebSocket handshake failed");
        assert_eq!(resp.status(), 101);
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu0 = proc.cpu_secs();
    let t0 = Instant::now();
    tokio::time::sleep(secs).await;
    let cpu = (proc.cpu_secs() - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    let rss = proc.rss_mib();
    drop(sockets);
    tokio::time::sleep(Duration::from_millis(500)).await;
    (rss, cpu)
}

/// p50/p99 of the time from sending a request to receiving its first body
/// byte, in µs, over `n` sequential streams on one warm connection.
async fn first_event(url: &str, n: usize) -> (f64, f64) {
    let client = https_client();
    let mut v = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let t = Instant::now();
        let mut body = client.request(post(url)).await.unwrap().into_body();
        let _ = body.frame().await;
        if i >= 10 {
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    percentiles(&mut v)
}
