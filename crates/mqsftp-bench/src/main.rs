//! `mqsftp-bench`: mqsftp's performance benchmark (issue 6). One run starts real Mosquitto and OpenSSH sshd
//! (`mqsftp-testkit`, per-run PKI, TLS on both MQTT legs), runs the **release** `mqsftp` binary as gateway and as
//! device CLI (separate processes, peak RSS sampled from `/proc/PID/status`), and measures side by side:
//!
//! * `throughput`: OpenSSH `sftp` get/put of the same file with the gateway's key and cipher (and the other
//!   cipher), and `mqsftp get`/`put` of it, interleaved `--runs` times, medians;
//! * `broker`: Mosquitto's own TLS publisher→subscriber throughput (rumqttc, QoS 1) at the gateway's chunk size;
//! * `latency`: 1 KiB gets on one warm device connection (`mqsftp-device` library), p50/p99, and the same get as
//!   a whole `mqsftp get` process and a whole OpenSSH `sftp` process (connection and all);
//! * `loaded`: pings while many downloads run, with the gateway straight on the broker and then through a relay
//!   that makes its link to the broker the slowest part: how long an answer waits behind chunks;
//! * `far`: the same with the broker 20 ms further from the gateway: what the windows cost a far broker;
//! * `devices`: N devices, each with its own certificate and connection, all getting 256 KiB at once;
//! * `big`: a `--big-size` get and put, with the peak RSS of gateway and device.
//!
//! It prints one table (figures, then targets with PASS/FAIL) and can write it as JSON. Run it with
//! `scripts/bench` (builds `--release` first). Layout: `env.rs` (stack, configs, files), `procs.rs` (child
//! processes, RSS), `scenarios.rs` (the measurements), `relay.rs` (the rate-limited TCP relay of `loaded`),
//! `report.rs` (table, JSON, targets).

mod env;
mod floor;
mod procs;
mod relay;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use mqsftp_proto::HashAlg;

use crate::env::Env;
use crate::report::{percentile, Report};
use crate::scenarios::mbps;

/// The two ciphers the raw `sftp` baseline is measured with: the one the gateway negotiates on this machine
/// (`mqsftp_gateway::store::preferred_ciphers`) is compared with, the other is reported for reference.
const CHACHA: &str = "chacha20-poly1305@openssh.com";
const AES_GCM: &str = "aes128-gcm@openssh.com";

/// (the gateway's cipher, the other one).
fn ciphers() -> (&'static str, &'static str) {
    let gateway = mqsftp_gateway::store::preferred_cipher_name();
    let other = if gateway == CHACHA { AES_GCM } else { CHACHA };
    (gateway, other)
}
/// File size of each device in the many-devices run.
const CROWD_FILE: u64 = 256 * 1024;

/// The loaded run's second part: the gateway's link to the broker passes this many bytes per second, and each
/// download is at most this large (so that it takes seconds, not minutes).
const SLOW_LINK_RATE: u64 = 32_000_000;
const SLOW_LINK_FILE: u64 = 2 * 1024 * 1024;

const MIB: f64 = 1024.0 * 1024.0;

/// Runs of a whole `mqsftp get` process (and of `sftp`) for 1 KiB in the latency scenario.
const CLI_ROUNDS: usize = 30;

/// The far run: the gateway's link to the broker holds each byte this long each way (a round trip 20 ms longer),
/// with room for any rate; the downloads of its runs are this large.
const FAR_DELAY: Duration = Duration::from_millis(10);
const FAR_FILE: u64 = 32 * 1024 * 1024;

const SCENARIOS: [&str; 7] = ["throughput", "broker", "latency", "loaded", "far", "devices", "big"];

#[derive(Parser, Debug)]
#[command(name = "mqsftp-bench", about = "mqsftp's performance benchmark against raw OpenSSH sftp and Mosquitto")]
struct Args {
    /// File size for the get/put and broker throughput runs (B, KiB, MiB, GiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    size: u64,
    /// File size of the get and put whose peak RSS is measured.
    #[arg(long, default_value = "4GiB", value_parser = parse_size)]
    big_size: u64,
    /// Concurrent devices, each with its own certificate and MQTT connection, each getting 256 KiB.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// 1 KiB gets timed on one warm connection (after 50 warm-up gets).
    #[arg(long, default_value_t = 1000)]
    small_requests: usize,
    /// Interleaved runs of the throughput measurements (medians are reported). Three by default: on a shared VM
    /// a single run's ratios move by ±0.15 with the machine's phase (docs/performance.md, "Latest run").
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Downloads running at once while pings measure how long an answer waits behind their chunks.
    #[arg(long, default_value_t = 100)]
    loaded_downloads: usize,
    /// File size of each of those downloads.
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    loaded_size: u64,
    /// Run only these scenarios (comma-separated): throughput, broker, latency, loaded, far, devices, big.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Gateway chunk size in bytes ([transfer] chunk_size; default: the gateway's default).
    #[arg(long, value_parser = parse_size)]
    chunk_size: Option<u64>,
    /// Gateway window in chunks ([transfer] window; default: the gateway's default).
    #[arg(long)]
    window: Option<u32>,
    /// Chunks in flight over all transfers together ([transfer] shared_window; default: the gateway's default).
    #[arg(long)]
    shared_window: Option<u32>,
    /// Messages the gateway may publish before the broker acknowledges them ([transfer] broker_window; default: the
    /// gateway's default).
    #[arg(long)]
    broker_window: Option<u16>,
    /// The hash mqsftp get and put verify with (`mqsftp get --hash`): blake3 (the device's default) or sha256.
    #[arg(long, default_value = "blake3", value_parser = parse_hash)]
    hash: HashAlg,
    /// Gateway runtime threads ([runtime] threads: 1 = one thread, 0 = one per core; default: the gateway's
    /// default).
    #[arg(long)]
    gateway_threads: Option<usize>,
    /// Directory for the gateway logs, kept after the run (default: a new mqsftp-bench-logs-* in the temp dir).
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Run the gateway under this command (split on spaces), e.g. "valgrind --tool=callgrind". Figures measured
    /// this way are the profiler's, not mqsftp's.
    #[arg(long, value_delimiter = ' ', allow_hyphen_values = true)]
    wrap_gateway: Vec<String>,
    /// Run the device CLI (get and put) under this command, like --wrap-gateway.
    #[arg(long, value_delimiter = ' ', allow_hyphen_values = true)]
    wrap_device: Vec<String>,
    /// The mqsftp binary to run as gateway and device (default: `mqsftp` next to this program).
    #[arg(long)]
    mqsftp: Option<PathBuf>,
}

fn parse_hash(s: &str) -> Result<HashAlg, String> {
    s.parse().map_err(|e: mqsftp_proto::UnknownHashAlg| e.to_string())
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a number with an optional unit, e.g. 1GiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        u => return Err(format!("{s:?}: unknown unit {u:?} (use B, KiB, MiB or GiB)")),
    };
    match n.checked_mul(mult) {
        Some(0) | None => Err(format!("{s:?}: must be between 1 byte and 16 EiB")),
        Some(v) => Ok(v),
    }
}

fn main() -> std::process::ExitCode {
    // As the mqsftp binary does, so that the MQTT parts measured here (the pub→sub run) are on the same terms.
    mqsftp_mqtt::heap::tune();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Runs the selected scenarios; `Ok(true)` when every target passed.
fn run(args: Args) -> anyhow::Result<bool> {
    for s in &args.only {
        if !SCENARIOS.contains(&s.as_str()) {
            bail!("--only: unknown scenario {s:?} (known: {})", SCENARIOS.join(", "));
        }
    }
    let selected = |name: &str| args.only.is_empty() || args.only.iter().any(|s| s == name);
    let mqsftp = match &args.mqsftp {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("mqsftp"),
    };
    if !mqsftp.is_file() {
        bail!("{} not found: build it with `cargo build --release -p mqsftp` or give --mqsftp", mqsftp.display());
    }
    if selected("devices") {
        // Each device is one connection here and one in Mosquitto (a child, with the same limit).
        let need = args.devices as u64 + 256;
        let have = procs::open_files_limit()?;
        if have < need {
            bail!("{} devices need at least {need} open files, the limit is {have}: raise it (`ulimit -n {need}`; scripts/bench raises it to the hard limit)", args.devices);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let max_transfers = (args.devices + 16).max(256);
    let logs = args.logs.clone().unwrap_or_else(|| {
        let stamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        std::env::temp_dir().join(format!("mqsftp-bench-logs-{stamp}"))
    });
    let chunk_size = match args.chunk_size {
        Some(c) => Some(u32::try_from(c).context("--chunk-size is too large")?),
        None => None,
    };
    let tuning = env::Tuning {
        max_transfers,
        chunk_size,
        window: args.window,
        shared_window: args.shared_window,
        broker_window: args.broker_window,
        gateway_threads: args.gateway_threads,
    };
    let mut env = Env::start(mqsftp.canonicalize()?, tuning, logs)?;
    env.wrap_gateway = args.wrap_gateway.clone();
    env.wrap_device = args.wrap_device.clone();
    env.hash = args.hash;
    let mut r = Report::default();
    r.setup("size", args.size);
    r.setup("big_size", args.big_size);
    r.setup("devices", args.devices);
    r.setup("small_requests", args.small_requests);
    r.setup("runs", args.runs);
    r.setup("chunk_size", env.chunk_size);
    r.setup("window", env.window);
    r.setup("shared_window", env.shared_window);
    r.setup("broker_window", env.broker_window);
    r.setup("gateway_threads", env.gateway_threads);
    r.setup("hash", env.hash.as_str());
    r.setup("gateway_max_transfers", max_transfers);
    r.setup("ssh_cipher", ciphers().0);
    r.setup("cpus", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    r.setup("loadavg_at_start", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string());
    eprintln!(
        "stack in {} (mqtt {}, sftp {})",
        env.stack.dir().display(),
        env.stack.mqtt_port(),
        env.stack.sftp_port()
    );

    if selected("throughput") || selected("broker") {
        let cost = throughput(&mut env, &runtime, &args, &mut r, selected("throughput"), selected("broker"))?;
        if selected("throughput") {
            limits(&mut r, &cost, env.hash, &env.work)?;
        }
    }
    if selected("latency") {
        if selected("throughput") || selected("broker") {
            // Whatever the transfers above left to write back is flushed first, so that the 1 KiB gets' fsyncs
            // never wait behind it (on 2026-11-30 there was nothing left: their files are deleted).
            let started = std::time::Instant::now();
            let synced = std::process::Command::new("sync").status().is_ok_and(|s| s.success());
            eprintln!(
                "latency: sync(1) of what the transfers left took {:.1} s (ok: {synced})",
                started.elapsed().as_secs_f64()
            );
        }
        eprintln!("latency: {} gets of 1 KiB", args.small_requests);
        let mut gw = env.gateway("latency")?;
        // The device library on a single-threaded runtime, as the device CLI runs it.
        let device = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let lat = device.block_on(scenarios::small_gets(&env, args.small_requests.max(1)));
        drop(device);
        gw.check_alive()?;
        let lat = lat?;
        eprintln!("latency: {CLI_ROUNDS} runs each of `mqsftp get` and `sftp` for 1 KiB, whole processes");
        let (cli_ms, sftp_cli_ms) = scenarios::small_cli_gets(&env, ciphers().0, CLI_ROUNDS)?;
        gw.check_alive()?;
        gw.stop();
        for (key, label, v, p) in [
            ("latency_p50_ms", "1 KiB get round trip p50 (warm)", &lat.get_ms, 50.0),
            ("latency_p99_ms", "1 KiB get round trip p99 (warm)", &lat.get_ms, 99.0),
            ("ping_p50_ms", "ping round trip p50 (broker hop, no SFTP)", &lat.ping_ms, 50.0),
            ("ping_p99_ms", "ping round trip p99", &lat.ping_ms, 99.0),
            ("latency_sftp_p50_ms", "  its SFTP work alone (stat+open, read) p50", &lat.sftp_ms, 50.0),
            (
                "latency_commit_p50_ms",
                "  its local commit alone (write, fsync, rename, dir fsync) p50",
                &lat.commit_ms,
                50.0,
            ),
            ("cli_get_p50_ms", "1 KiB get, a whole `mqsftp get` process, p50", &cli_ms, 50.0),
            ("sftp_cli_get_p50_ms", "1 KiB get, a whole OpenSSH `sftp` process, p50", &sftp_cli_ms, 50.0),
        ] {
            if let Some(x) = percentile(v, p) {
                r.figure(key, label, "ms", x);
            }
        }
        let p50 = |v: &Vec<f64>| percentile(v, 50.0);
        if let (Some(ping), Some(sftp), Some(commit)) = (p50(&lat.ping_ms), p50(&lat.sftp_ms), p50(&lat.commit_ms)) {
            let parts = ping + sftp + commit;
            r.notes.push(format!(
                "1 KiB get: the broker round trip ({ping:.2} ms), the store's two round trips ({sftp:.2} ms) and the \
                 device's durable commit ({commit:.2} ms), each timed alone at p50, add up to {parts:.2} ms; the rest \
                 of the get's p50 is mqsftp's own (messages, tasks, threads)"
            ));
        }
    }
    if selected("loaded") {
        loaded(&mut env, &runtime, &args, &mut r)?;
    }
    if selected("far") {
        far(&mut env, &runtime, &mut r)?;
    }
    if selected("devices") {
        eprintln!("devices: {} devices, each getting 256 KiB at once", args.devices);
        let mut gw = env.gateway("devices")?;
        let crowd = runtime.block_on(scenarios::many_devices(&env, args.devices, CROWD_FILE));
        gw.check_alive()?;
        let crowd = crowd?;
        let rss = gw.stop();
        r.figure(
            "devices_failures",
            &format!("{} devices x 256 KiB get: failures", crowd.devices),
            "",
            crowd.failures as f64,
        );
        r.figure("devices_elapsed_s", "  all gets, start to last done", "s", crowd.elapsed.as_secs_f64());
        r.figure(
            "devices_connect_s",
            "  connecting all devices (64 at a time)",
            "s",
            crowd.connect_elapsed.as_secs_f64(),
        );
        r.figure("devices_gateway_rss_mib", "  gateway peak RSS", "MiB", rss as f64 / MIB);
        for (msg, n) in &crowd.errors {
            r.notes.push(format!("devices: {n} x {msg}"));
        }
    }
    if selected("big") {
        big(&mut env, &args, &mut r)?;
    }

    r.ratio_at_least("get_mbps", "sftp_get_mbps", 0.8);
    r.ratio_at_least("put_mbps", "sftp_put_mbps", 0.8);
    r.ratio_at_least("get_mbps", "broker_mbps", 0.85);
    r.ratio_at_least("put_mbps", "broker_mbps", 0.85);
    r.at_most("latency_p50_ms", 2.0);
    r.at_most("latency_p99_ms", 10.0);
    r.at_most("devices_failures", 0.0);
    for key in ["loaded", "slowlink", "far1", "far8", "far8wide", "far1wide"] {
        r.at_most(&format!("{key}_ping_failures"), 0.0);
        r.at_most(&format!("{key}_download_failures"), 0.0);
    }
    r.at_most("devices_gateway_rss_mib", 128.0);
    r.at_most("big_get_gateway_rss_mib", 64.0);
    r.at_most("big_get_device_rss_mib", 32.0);
    r.at_most("big_put_gateway_rss_mib", 64.0);
    r.at_most("big_put_device_rss_mib", 32.0);

    print!("{}", r.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&r)?).with_context(|| format!("write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(r.targets.iter().all(|t| t.pass))
}

/// Pings while many downloads run: first with the gateway straight on the broker, then with its link to the
/// broker (through [`relay`]) the slowest part, where chunks wait at the gateway and answers must not wait behind
/// them.
fn loaded(env: &mut Env, runtime: &tokio::runtime::Runtime, args: &Args, r: &mut Report) -> anyhow::Result<()> {
    let n = args.loaded_downloads.max(1);
    let rate = SLOW_LINK_RATE as f64 / 1e6;
    for (slow, size) in [(false, args.loaded_size), (true, SLOW_LINK_FILE.min(args.loaded_size))] {
        let (key, link) =
            if slow { ("slowlink", format!(", link to the broker at {rate} MB/s")) } else { ("loaded", String::new()) };
        eprintln!("{key}: pings while {n} downloads of {size} bytes run{link}");
        let relay = if slow {
            Some(runtime.block_on(relay::start(env.stack.mqtt_port(), Some(SLOW_LINK_RATE), Duration::ZERO))?)
        } else {
            None
        };
        let mut gw = match &relay {
            Some(relay) => env.gateway_via(key, relay.port, &[])?,
            None => env.gateway(key)?,
        };
        let loaded = runtime.block_on(scenarios::pings_under_load(env, n, size));
        gw.check_alive()?;
        let loaded = loaded?;
        gw.stop();
        drop(relay);
        for (what, label, p) in [
            ("ping_p50_ms", format!("ping round trip p50 while {n} downloads run{link}"), 50.0),
            ("ping_p99_ms", "  p99".to_string(), 99.0),
            ("ping_max_ms", "  max".to_string(), 100.0),
        ] {
            if let Some(x) = percentile(&loaded.ping_ms, p) {
                r.figure(&format!("{key}_{what}"), &label, "ms", x);
            }
        }
        r.figure(&format!("{key}_ping_failures"), "  pings unanswered", "", loaded.ping_failures as f64);
        r.figure(&format!("{key}_download_failures"), "  downloads failed", "", loaded.download_failures as f64);
        r.figure(&format!("{key}_mbps"), "  the downloads together", "MB/s", loaded.mbps);
    }
    Ok(())
}

/// A broker far from the gateway (20 ms more per round trip, through [`relay`]): what the windows cost there.
/// Every message the gateway publishes is acknowledged a round trip later, so at most `broker_window` chunks per
/// round trip reach the broker from all transfers together, and at most `window` chunks of one download (its
/// device's acknowledgements come back the same way; eight downloads share `shared_window`). Four runs, each with pings every 10 ms: one download and
/// eight with the gateway's settings, then eight with a broker window of 32 and one with a window of 16 as well.
fn far(env: &mut Env, runtime: &tokio::runtime::Runtime, r: &mut Report) -> anyhow::Result<()> {
    let delay = FAR_DELAY.as_secs_f64() * 2e3;
    let (window, broker_window) = (i64::from(env.window), i64::from(env.broker_window));
    for (key, n, window, broker_window) in [
        ("far1", 1, window, broker_window),
        ("far8", 8, window, broker_window),
        ("far8wide", 8, window, 32),
        ("far1wide", 1, 16, 32),
    ] {
        let settings = format!("window {window} ({} shared), broker window {broker_window}", env.shared_window);
        eprintln!("{key}: {n} downloads of {FAR_FILE} bytes, broker {delay} ms further away, {settings}");
        let relay = runtime.block_on(relay::start(env.stack.mqtt_port(), None, FAR_DELAY))?;
        let transfer = [("window", window), ("broker_window", broker_window)];
        let mut gw = env.gateway_via(key, relay.port, &transfer)?;
        let loaded = runtime.block_on(scenarios::pings_under_load(env, n, FAR_FILE));
        gw.check_alive()?;
        let loaded = loaded?;
        gw.stop();
        drop(relay);
        let label = format!("broker {delay} ms away, {n} x {} MiB, {settings}", FAR_FILE >> 20);
        r.figure(&format!("{key}_mbps"), &label, "MB/s", loaded.mbps);
        for (what, label, p) in [("ping_p50_ms", "  ping round trip p50", 50.0), ("ping_p99_ms", "  p99", 99.0)] {
            if let Some(x) = percentile(&loaded.ping_ms, p) {
                r.figure(&format!("{key}_{what}"), label, "ms", x);
            }
        }
        r.figure(&format!("{key}_ping_failures"), "  pings unanswered", "", loaded.ping_failures as f64);
        r.figure(&format!("{key}_download_failures"), "  downloads failed", "", loaded.download_failures as f64);
    }
    Ok(())
}

/// The in-process rumqttc publisher + subscriber of the broker run, in [`CpuCost`].
const RUMQTTC: &str = "rumqttc publisher+subscriber";

/// CPU seconds per GiB by process (`sshd`, `mosquitto`, `gateway`, `device CLI`, `sftp client`) for sftp get,
/// mqsftp get, sftp put, mqsftp put, and Mosquitto's own pub->sub run.
type CpuCost = [Vec<(String, f64)>; 5];

/// What the machine allows: the per-byte primitives timed here, and for each direction the fastest a transfer can
/// go on these cores at its measured CPU cost, and at the least cost any gateway and device could have
/// (see `floor.rs`).
fn limits(r: &mut Report, cost: &CpuCost, hash: HashAlg, work_dir: &std::path::Path) -> anyhow::Result<()> {
    eprintln!("limits: timing SHA-256, BLAKE3, AES-128-GCM and CRC32C on one core");
    let p = floor::measure()?;
    r.figure("sha256_s_per_gib", "SHA-256 (sha2), one core", "s/GiB", p.sha256);
    r.figure("blake3_s_per_gib", "BLAKE3 (blake3, one thread), one core", "s/GiB", p.blake3);
    r.figure("aes_gcm_s_per_gib", "AES-128-GCM, 16 KiB records (aws-lc-rs), one core", "s/GiB", p.aes_gcm);
    r.figure("crc32c_s_per_gib", "CRC32C, one core", "s/GiB", p.crc32c);
    eprintln!("limits: timing loopback TCP and file I/O, 256 KiB per system call");
    let io = floor::measure_io(work_dir)?;
    r.figure("tcp_send_s_per_gib", "loopback TCP send, 256 KiB writes, sending thread", "s/GiB", io.tcp_send);
    r.figure("tcp_recv_s_per_gib", "loopback TCP receive, 256 KiB reads, receiving thread", "s/GiB", io.tcp_recv);
    r.figure(
        "file_write_s_per_gib",
        "file write + fsync, 256 KiB writes (page cache or O_DIRECT)",
        "s/GiB",
        io.file_write,
    );
    r.figure("file_read_s_per_gib", "file read, 256 KiB reads (page cache or O_DIRECT)", "s/GiB", io.file_read);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let total = |v: &Vec<(String, f64)>| v.iter().map(|(_, s)| s).sum::<f64>();
    for (dir, raw, ours) in [("get", &cost[0], &cost[1]), ("put", &cost[2], &cost[3])] {
        if raw.is_empty() || ours.is_empty() {
            continue;
        }
        // The servers' cost, taken at its lowest: sshd as it serves raw sftp or mqsftp, Mosquitto as it carries
        // mqsftp or its own pub->sub run, whichever cost less per GiB.
        let of = |v: &Vec<(String, f64)>, name: &str| v.iter().find(|(n, _)| n == name).map(|(_, s)| *s);
        let least_of = |name: &str, runs: [&Vec<(String, f64)>; 2]| {
            runs.iter().filter_map(|v| of(v, name)).fold(f64::INFINITY, f64::min)
        };
        let sshd = least_of("sshd", [raw, ours]);
        let mosquitto = least_of("mosquitto", [ours, &cost[4]]);
        let servers = if sshd.is_finite() && mosquitto.is_finite() { sshd + mosquitto } else { 0.0 };
        let kernel = if dir == "get" { io.get() } else { io.put() };
        let least = servers + p.gateway_and_device(hash) + kernel;
        // What the same work costs when done by the programs measured here: sshd and the sftp client as in raw sftp
        // (serving the file; receiving it over SSH and writing it, or reading it and sending it over SSH), Mosquitto
        // and a rumqttc publisher and subscriber as in the pub->sub run (TLS out, relay, TLS in), plus the hash and
        // CRC on both ends. mqsftp does all of that per byte, so this is what it costs unless it does each part
        // more cheaply than those programs do.
        let parts = [
            of(raw, "sshd"),
            of(raw, "sftp client"),
            of(&cost[4], "mosquitto"),
            of(&cost[4], RUMQTTC),
            Some(2.0 * (p.hash(hash) + p.crc32c)),
        ];
        let components = parts.iter().all(Option::is_some).then(|| parts.iter().flatten().sum::<f64>());
        if let Some(c) = components {
            let label = format!(
                "mqsftp {dir}: bound from measured parts, sshd + sftp client + Mosquitto + rumqttc pub/sub + \
                 {hash}/CRC x2 ({c:.2} s/GiB)"
            );
            r.figure(&format!("{dir}_components_bound_mbps"), &label, "MB/s", floor::bound_mbps(cores, c));
        }
        r.figure(
            &format!("sftp_{dir}_cpu_bound_mbps"),
            &format!("raw sftp {dir}: bound on {cores} cores at its CPU cost ({:.2} s/GiB)", total(raw)),
            "MB/s",
            floor::bound_mbps(cores, total(raw)),
        );
        r.figure(
            &format!("{dir}_cpu_bound_mbps"),
            &format!("mqsftp {dir}: bound on {cores} cores at its CPU cost ({:.2} s/GiB)", total(ours)),
            "MB/s",
            floor::bound_mbps(cores, total(ours)),
        );
        let label = format!(
            "mqsftp {dir}: bound, sshd+Mosquitto at their least, gateway+device only crypto/{hash}/CRC and the \
             kernel's socket and file calls ({servers:.2} + {:.2} + {kernel:.2} s/GiB)",
            p.gateway_and_device(hash)
        );
        let best = floor::bound_mbps(cores, least);
        r.figure(&format!("{dir}_floor_mbps"), &label, "MB/s", best);
        for (key, min, what) in
            [(format!("sftp_{dir}_mbps"), 0.8, "raw sftp"), ("broker_mbps".into(), 0.85, "Mosquitto pub->sub")]
        {
            let Some(base) = r.get(&key) else { continue };
            let verdict = if best < min * base { "out of reach on this machine" } else { "reachable in principle" };
            r.notes.push(format!(
                "{dir} >= {min} x {what} needs {:.0} MB/s; with sshd and Mosquitto at their least cost here, no \
                 gateway and device that do their cryptography and move the bytes through the kernel could do \
                 better than {best:.0} MB/s ({:.2} x) on {cores} cores: {verdict}",
                min * base,
                best / base
            ));
            if let Some(c) = components {
                let at = floor::bound_mbps(cores, c);
                r.notes.push(format!(
                    "{dir}: at what sshd, the sftp client, Mosquitto and rumqttc cost for their parts of it, plus the \
                     hashes, {dir} goes at most {at:.0} MB/s ({:.2} x {what}) on {cores} cores",
                    at / base
                ));
            }
        }
    }
    Ok(())
}

/// Raw sftp vs mqsftp get and put, and the broker's ceiling, interleaved `--runs` times.
fn throughput(
    env: &mut Env,
    runtime: &tokio::runtime::Runtime,
    args: &Args,
    r: &mut Report,
    transfers: bool,
    broker: bool,
) -> anyhow::Result<CpuCost> {
    let size = args.size;
    let name = "throughput.bin";
    let (gateway_cipher, other_cipher) = ciphers();
    let file = scenarios::store_file(env, name, size)?;
    let mut gw = if transfers { Some(env.gateway("throughput")?) } else { None };
    let keys = [
        "sftp_get_mbps",
        "get_mbps",
        "sftp_put_mbps",
        "put_mbps",
        "sftp_get_other_mbps",
        "sftp_put_other_mbps",
        "broker_mbps",
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); keys.len()];
    // CPU seconds by process over all runs, for sftp get, get, sftp put, put.
    let mut cpu: [Vec<(String, f64)>; 5] = Default::default();
    // Minor page faults by process, likewise.
    let mut faults: [Vec<(String, f64)>; 5] = Default::default();
    let mut add_cpu = |i: usize, t: &procs::Timed| {
        for (sums, of_run) in [(&mut cpu[i], &t.cpu), (&mut faults[i], &t.faults)] {
            for (name, v) in of_run {
                match sums.iter_mut().find(|(n, _)| n == name) {
                    Some((_, sum)) => *sum += v,
                    None => sums.push((name.clone(), *v)),
                }
            }
        }
    };
    let (mut get_rss, mut put_rss) = (0u64, 0u64);
    for run in 1..=args.runs.max(1) {
        eprintln!("throughput: run {run} of {}", args.runs.max(1));
        if transfers {
            let t = scenarios::sftp_get(env, gateway_cipher, name, size)?;
            add_cpu(0, &t);
            samples[0].push(mbps(size, t.elapsed));
            let t = scenarios::mqsftp_get(env, name, size)?;
            add_cpu(1, &t);
            get_rss = get_rss.max(t.peak_rss);
            samples[1].push(mbps(size, t.elapsed));
            let t = scenarios::sftp_put(env, gateway_cipher, &file, "put-sftp.bin", size)?;
            add_cpu(2, &t);
            samples[2].push(mbps(size, t.elapsed));
            let t = scenarios::mqsftp_put(env, &file, "put-mqsftp.bin", size)?;
            add_cpu(3, &t);
            put_rss = put_rss.max(t.peak_rss);
            samples[3].push(mbps(size, t.elapsed));
            samples[4].push(mbps(size, scenarios::sftp_get(env, other_cipher, name, size)?.elapsed));
            samples[5].push(mbps(size, scenarios::sftp_put(env, other_cipher, &file, "put-sftp.bin", size)?.elapsed));
            if let Some(gw) = gw.as_mut() {
                gw.check_alive()?;
            }
        }
        if broker {
            let (before, own) = (procs::cpu_snapshot(), procs::own_cpu());
            let elapsed = runtime.block_on(scenarios::broker_ceiling(env, size, env.chunk_size as usize))?;
            let mut used = procs::delta(&before, &procs::cpu_snapshot());
            // The publisher and the subscriber run in this process: what a TLS MQTT sender and receiver cost.
            used.push((RUMQTTC.to_string(), procs::own_cpu() - own));
            add_cpu(4, &procs::Timed { elapsed, peak_rss: 0, cpu: used, faults: Vec::new() });
            samples[6].push(mbps(size, elapsed));
        }
    }
    let chunk_kib = env.chunk_size / 1024;
    let labels = [
        format!("OpenSSH sftp get ({gateway_cipher})"),
        format!("mqsftp get (device CLI, {} verified, fsynced)", env.hash),
        format!("OpenSSH sftp put ({gateway_cipher})"),
        format!("mqsftp put (device CLI, {} verified, fsynced on store)", env.hash),
        format!("OpenSSH sftp get ({other_cipher})"),
        format!("OpenSSH sftp put ({other_cipher})"),
        format!("Mosquitto TLS pub->sub, {chunk_kib} KiB QoS 1 (rumqttc)"),
    ];
    for ((key, label), s) in keys.iter().zip(labels.iter()).zip(samples) {
        r.median(key, label, "MB/s", s);
    }
    let runs = args.runs.max(1) as f64;
    let gib = size as f64 / (1u64 << 30) as f64;
    let mut cost = CpuCost::default();
    let runs_of = ["sftp get", "mqsftp get", "sftp put", "mqsftp put", "Mosquitto pub->sub"];
    for ((what, used), per) in runs_of.iter().zip(cpu.iter()).zip(&mut cost) {
        if used.is_empty() {
            continue;
        }
        let mqsftp = what.starts_with("mqsftp");
        let mut parts = Vec::new();
        let mut total = 0.0;
        for (name, secs) in used {
            let per_gib = secs / runs / gib;
            if per_gib < 0.005 {
                continue;
            }
            total += per_gib;
            let label = process_label(name, mqsftp);
            parts.push(format!("{label} {per_gib:.2}"));
            per.push((label.to_string(), per_gib));
        }
        r.notes.push(format!("CPU seconds per GiB, {what}: {} (total {total:.2})", parts.join(", ")));
    }
    // Pages faulted in by device and gateway: what the allocator's reuse of chunk-sized buffers saves (mqsftp_mqtt::heap).
    for (i, dir) in [(1, "get"), (3, "put")] {
        for (name, n) in &faults[i] {
            // The gateway is the child that is neither broker nor SSH server (named after its binary or wrapper).
            let (who, label) = match name.as_str() {
                "client" => ("device", "device CLI"),
                "mosquitto" | "sshd" => continue,
                _ => ("gateway", "gateway"),
            };
            let label = format!("mqsftp {dir}: {label} page faults per GiB");
            r.figure(&format!("{dir}_{who}_faults_per_gib"), &label, "", n / runs / gib);
        }
    }
    if let Some(gw) = gw {
        let rss = gw.stop();
        r.figure("throughput_gateway_rss_mib", "gateway peak RSS during the get/put runs", "MiB", rss as f64 / MIB);
        r.figure("throughput_get_device_rss_mib", "device CLI peak RSS, get", "MiB", get_rss as f64 / MIB);
        r.figure("throughput_put_device_rss_mib", "device CLI peak RSS, put", "MiB", put_rss as f64 / MIB);
    }
    std::fs::remove_file(&file).with_context(|| format!("remove {}", file.display()))?;
    Ok(cost)
}

/// How the notes name a process of [`procs::cpu_snapshot`]; `client` is the device CLI in an mqsftp run.
fn process_label(name: &str, mqsftp: bool) -> &str {
    match name {
        "client" if mqsftp => "device CLI",
        "client" => "sftp client",
        "mqsftp" => "gateway",
        other => other,
    }
}

/// A `--big-size` get and put, each with a fresh gateway, for the peak RSS of gateway and device.
fn big(env: &mut Env, args: &Args, r: &mut Report) -> anyhow::Result<()> {
    let size = args.big_size;
    let name = "big.bin";
    eprintln!("big: get and put of {size} bytes");
    let file = scenarios::store_file(env, name, size)?;
    let gw = env.gateway("big-get")?;
    let t = scenarios::mqsftp_get(env, name, size);
    let gw_rss = gw.stop();
    let t = t?;
    r.figure("big_get_mbps", &format!("mqsftp get of {} MiB", size >> 20), "MB/s", mbps(size, t.elapsed));
    r.figure("big_get_gateway_rss_mib", "  gateway peak RSS", "MiB", gw_rss as f64 / MIB);
    r.figure("big_get_device_rss_mib", "  device CLI peak RSS", "MiB", t.peak_rss as f64 / MIB);
    let gw = env.gateway("big-put")?;
    let t = scenarios::mqsftp_put(env, &file, "big-put.bin", size);
    let gw_rss = gw.stop();
    let t = t?;
    r.figure("big_put_mbps", &format!("mqsftp put of {} MiB", size >> 20), "MB/s", mbps(size, t.elapsed));
    r.figure("big_put_gateway_rss_mib", "  gateway peak RSS", "MiB", gw_rss as f64 / MIB);
    r.figure("big_put_device_rss_mib", "  device CLI peak RSS", "MiB", t.peak_rss as f64 / MIB);
    std::fs::remove_file(&file).with_context(|| format!("remove {}", file.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("0").unwrap_err().contains("between"));
        assert!(parse_size("1TB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("GiB").is_err());
    }

    #[test]
    fn scenarios_are_checked() {
        let args = Args::parse_from(["mqsftp-bench", "--only", "latency,bogus", "--mqsftp", "/nonexistent"]);
        let e = run(args).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
