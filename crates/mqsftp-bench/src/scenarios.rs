//! The measurements. Each returns plain numbers; `main.rs` turns them into figures and targets.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use mqsftp_device::{Client, DeviceConfig};
use mqsftp_mqtt::rumqttc::QoS;
use mqsftp_mqtt::{BrokerConfig, LinkOptions, MqttLink};

use crate::env::{self, Env};
use crate::procs::{self, Timed};

/// MB/s (10^6 bytes per second), as the baselines are given.
pub fn mbps(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

/// A time limit for moving `bytes` through anything here: generous (1 MB/s, for runs under a profiler), at least
/// 5 minutes.
fn limit_for(bytes: u64) -> Duration {
    Duration::from_secs(300).max(Duration::from_secs(bytes / 1_000_000))
}

/// The big file on the store that gets and puts use; created once per size.
pub fn store_file(env: &Env, name: &str, size: u64) -> anyhow::Result<PathBuf> {
    let path = env.device_root.join(name);
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(size) {
        env::random_file(&path, size)?;
    }
    Ok(path)
}

/// OpenSSH `sftp` get of `remote` (a name in the device root) with `cipher`.
pub fn sftp_get(env: &Env, cipher: &str, remote: &str, size: u64) -> anyhow::Result<Timed> {
    let local = env.work.join("sftp-get.out");
    env::remove(&local);
    let batch = env.work.join("sftp-get.batch");
    std::fs::write(&batch, format!("get {} {}\n", env.store_path(remote), local.display()))?;
    let t = procs::run_timed(env.sftp_cmd(cipher, &batch), "sftp get", limit_for(size))?;
    let got = std::fs::metadata(&local).map(|m| m.len()).unwrap_or(0);
    env::remove(&local);
    if got != size {
        bail!("sftp get wrote {got} bytes, expected {size}");
    }
    Ok(t)
}

/// OpenSSH `sftp` put of the local file `local` to `remote` in the device root, with `cipher`.
pub fn sftp_put(env: &Env, cipher: &str, local: &Path, remote: &str, size: u64) -> anyhow::Result<Timed> {
    let batch = env.work.join("sftp-put.batch");
    std::fs::write(&batch, format!("put {} {}\n", local.display(), env.store_path(remote)))?;
    let t = procs::run_timed(env.sftp_cmd(cipher, &batch), "sftp put", limit_for(size))?;
    let target = env.device_root.join(remote);
    let got = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
    env::remove(&target);
    if got != size {
        bail!("sftp put stored {got} bytes, expected {size}");
    }
    Ok(t)
}

/// `mqsftp get` (the release CLI, a process of its own) of `remote`; the CLI verifies the SHA-256 itself.
pub fn mqsftp_get(env: &Env, remote: &str, size: u64) -> anyhow::Result<Timed> {
    let local = env.work.join("mqsftp-get.out");
    env::remove(&local);
    let t = procs::run_timed(env.get_cmd(remote, &local), "mqsftp get", limit_for(size))?;
    let got = std::fs::metadata(&local).map(|m| m.len()).unwrap_or(0);
    env::remove(&local);
    if got != size {
        bail!("mqsftp get wrote {got} bytes, expected {size}");
    }
    Ok(t)
}

/// `mqsftp put` (the release CLI) of `local` to `remote`; the gateway verifies the SHA-256 before it commits.
pub fn mqsftp_put(env: &Env, local: &Path, remote: &str, size: u64) -> anyhow::Result<Timed> {
    let t = procs::run_timed(env.put_cmd(local, remote), "mqsftp put", limit_for(size))?;
    let target = env.device_root.join(remote);
    let got = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
    env::remove(&target);
    if got != size {
        bail!("mqsftp put stored {got} bytes, expected {size}");
    }
    Ok(t)
}

/// The broker's own ceiling: one rumqttc publisher (the gateway's certificate and MQTT settings) to one rumqttc
/// subscriber (the bench device's certificate and settings), over TLS, `size` bytes in `chunk`-byte QoS 1
/// messages on a device `down` topic. Timed from the first publish to the last byte received.
pub async fn broker_ceiling(env: &Env, size: u64, chunk: usize) -> anyhow::Result<Duration> {
    let gw = mqsftp_gateway::GatewayConfig::load(&env.gateway_toml)?;
    let dev = DeviceConfig::load(&env.device_toml)?;
    let topic = format!("mqsftp/v1/{}/down/ceiling", env::DEVICE);
    let link = |cfg: &BrokerConfig, client_id: &str, subs: Vec<String>, inflight: u16| {
        let cfg = cfg.clone();
        let opts = LinkOptions {
            client_id: client_id.to_string(),
            subscriptions: subs,
            connect_timeout: Duration::from_secs(15),
            reconnect: false,
            inflight,
            queue: mqsftp_mqtt::LinkOptions::DEFAULT_QUEUE,
        };
        async move { MqttLink::connect(&cfg, opts).await }
    };
    // The same in-flight settings as the gateway (64) and the device (32) use.
    let mut sub = link(&dev.broker, "bench-ceiling-sub", vec![topic.clone()], 32).await?;
    let publ = link(&gw.broker, "bench-ceiling-pub", vec![], 64).await?;
    let payload = Bytes::from(vec![0xa5u8; chunk]);
    let count = size.div_ceil(chunk as u64);
    let started = Instant::now();
    let client = publ.client.clone();
    let topic2 = topic.clone();
    let publisher = tokio::spawn(async move {
        for _ in 0..count {
            client.publish_bytes(topic2.clone(), QoS::AtLeastOnce, false, payload.clone()).await?;
        }
        Ok::<_, mqsftp_mqtt::rumqttc::ClientError>(())
    });
    let mut got = 0u64;
    let deadline = tokio::time::Instant::now() + limit_for(size);
    while got < count * chunk as u64 {
        match tokio::time::timeout_at(deadline, sub.incoming.recv()).await {
            Ok(Some(p)) if p.topic == topic => got += p.payload.len() as u64,
            Ok(Some(_)) => {}
            Ok(None) => bail!("the subscriber's connection closed: {}", sub.closed().await),
            Err(_) => bail!("broker ceiling: only {got} of {} bytes arrived in time", count * chunk as u64),
        }
    }
    let elapsed = started.elapsed();
    publisher.await.context("publisher task")?.context("publish")?;
    drop(publ);
    Ok(elapsed)
}

/// Round trips of 1 KiB gets (and of pings, the broker hop alone) on one warm device connection, and the parts a
/// get cannot do without, each timed alone: in ms, sorted.
pub struct Latencies {
    pub get_ms: Vec<f64>,
    pub ping_ms: Vec<f64>,
    /// The gateway's store work for a 1 KiB get on a warm SFTP session: the stat and open (together), then the read.
    pub sftp_ms: Vec<f64>,
    /// The device's commit of a 1 KiB download: write the part file, fsync it, rename it, fsync the directory.
    pub commit_ms: Vec<f64>,
}

/// The 1 KiB file on the store that the latency scenario gets.
const SMALL_FILE: &str = "small-1k.bin";

pub async fn small_gets(env: &Env, requests: usize) -> anyhow::Result<Latencies> {
    let name = SMALL_FILE;
    store_file(env, name, 1024)?;
    let cfg = DeviceConfig::load(&env.device_toml)?;
    let mut client = Client::connect(&cfg).await?;
    let local = env.work.join("small-1k.out");
    // Warm up: the gateway's SFTP session, the page cache, the allocators.
    for _ in 0..50 {
        client.get(name, &local, |_| {}).await?;
    }
    let mut get_ms = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        let o = client.get(name, &local, |_| {}).await?;
        get_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if o.size != 1024 {
            bail!("small get returned {} bytes", o.size);
        }
    }
    let mut ping_ms = Vec::with_capacity(requests);
    for _ in 0..requests.min(1000) {
        ping_ms.push(client.ping().await?.0.as_secs_f64() * 1e3);
    }
    let rounds = requests.min(1000);
    let mut sftp_ms = store_round_trips(env, name, rounds).await?;
    let mut commit_ms = local_commits(&env.work, rounds)?;
    for v in [&mut get_ms, &mut ping_ms, &mut sftp_ms, &mut commit_ms] {
        v.sort_by(f64::total_cmp);
    }
    env::remove(&local);
    Ok(Latencies { get_ms, ping_ms, sftp_ms, commit_ms })
}

/// One 1 KiB get as a user runs it, `rounds` times each way, interleaved: the whole `mqsftp get` process (start,
/// TLS connect, get, verify, commit, exit) and the whole OpenSSH `sftp` process (start, SSH handshake, key login,
/// get, exit) with `cipher`. Wall times in ms, sorted: (mqsftp, sftp).
pub fn small_cli_gets(env: &Env, cipher: &str, rounds: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let name = SMALL_FILE;
    store_file(env, name, 1024)?;
    let (mut ours, mut theirs) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        ours.push(mqsftp_get(env, name, 1024)?.elapsed.as_secs_f64() * 1e3);
        theirs.push(sftp_get(env, cipher, name, 1024)?.elapsed.as_secs_f64() * 1e3);
    }
    ours.sort_by(f64::total_cmp);
    theirs.sort_by(f64::total_cmp);
    Ok((ours, theirs))
}

/// What the gateway asks of the SFTP server for a 1 KiB get, timed `rounds` times on a session of its own (with
/// the gateway's key and settings, warmed up first): stat and open in one round trip, then the read.
async fn store_round_trips(env: &Env, name: &str, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let gw = mqsftp_gateway::GatewayConfig::load(&env.gateway_toml)?;
    let session = Arc::new(mqsftp_gateway::store::connect(&gw.sftp).await?);
    let device = mqsftp_proto::DeviceId::new(env::DEVICE)?;
    let path = gw.store.path_of(&device, &mqsftp_proto::confine(name)?);
    let mut out = Vec::with_capacity(rounds);
    for i in 0..rounds + 20 {
        let t = Instant::now();
        let (meta, file) = tokio::join!(session.metadata(path.as_str()), session.open_read(path.as_str()));
        let (meta, file) = (meta.context("stat")?, file.context("open")?);
        let data = file.read_exact_at(0, 1024).await.context("read")?;
        let elapsed = t.elapsed();
        if meta.len() != 1024 || data.len() != 1024 {
            bail!("{path}: {} bytes stated, {} read, 1024 expected", meta.len(), data.len());
        }
        if i >= 20 {
            out.push(elapsed.as_secs_f64() * 1e3);
        }
    }
    Ok(out)
}

/// The device's durable commit of a 1 KiB download, in `dir`, timed `rounds` times: create and write the part
/// file, fsync it, rename it to the target, fsync the directory (`mqsftp-device`'s `file_io.rs` does the same).
/// As there, the file the rename replaces is held open across it and released after the clock stops, so that the
/// filesystem frees it then rather than inside the rename.
fn local_commits(dir: &Path, rounds: usize) -> anyhow::Result<Vec<f64>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (part, target) = (dir.join(".commit-1k.mqsftp-part"), dir.join("commit-1k.out"));
    let data = [0x5au8; 1024];
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let mut f = std::fs::File::options().create(true).append(true).open(&part)?;
        f.write_all(&data)?;
        f.sync_all()?;
        drop(f);
        let replaced = std::fs::File::options().read(true).custom_flags(libc::O_PATH | libc::O_NOFOLLOW).open(&target);
        std::fs::rename(&part, &target)?;
        std::fs::File::open(dir)?.sync_all()?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
        drop(replaced);
    }
    env::remove(&target);
    Ok(out)
}

/// What the many-devices run saw.
pub struct Crowd {
    pub devices: usize,
    pub failures: usize,
    /// From the moment all gets were started to the last one finishing.
    pub elapsed: Duration,
    /// Failure messages, counted by text.
    pub errors: Vec<(String, usize)>,
    pub connect_elapsed: Duration,
}

/// `devices` devices, each with its own certificate and MQTT connection, all getting a 256 KiB file at once.
pub async fn many_devices(env: &Env, devices: usize, file_size: u64) -> anyhow::Result<Crowd> {
    // One file, hard-linked into every device's root (each device reads "its own" file, the disk holds one).
    let source = env.work.join("crowd.bin");
    env::random_file(&source, file_size)?;
    let mut configs = Vec::with_capacity(devices);
    for i in 0..devices {
        let id = format!("crowd{i:05}");
        let toml = env.stack.device(&id)?;
        let root = env.stack.device_root(&id);
        std::fs::create_dir_all(&root)?;
        let target = root.join("crowd.bin");
        if !target.exists() {
            std::fs::hard_link(&source, &target).with_context(|| format!("link {}", target.display()))?;
        }
        configs.push(DeviceConfig::load(&toml)?);
    }
    // Connect everyone first (at most 64 TLS handshakes at a time); the gets then start together.
    let connect_started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut connecting = Vec::with_capacity(devices);
    for cfg in configs {
        let gate = gate.clone();
        connecting.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            Client::connect(&cfg).await
        }));
    }
    let mut clients = Vec::with_capacity(devices);
    for c in connecting {
        clients.push(c.await.context("connect task")?.context("a device could not connect")?);
    }
    let connect_elapsed = connect_started.elapsed();
    let out = env.work.join("crowd-out");
    std::fs::create_dir_all(&out)?;
    let start = Arc::new(tokio::sync::Barrier::new(devices + 1));
    let mut tasks = Vec::with_capacity(devices);
    for (i, mut client) in clients.into_iter().enumerate() {
        let start = start.clone();
        let local = out.join(format!("{i}.bin"));
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let r = client.get("crowd.bin", &local, |_| {}).await;
            let _ = tokio::fs::remove_file(&local).await;
            match r {
                Ok(o) if o.size == file_size => Ok(()),
                Ok(o) => Err(format!("wrong size {}", o.size)),
                Err(e) => Err(e.to_string()),
            }
        }));
    }
    start.wait().await;
    let started = Instant::now();
    let mut failures = 0;
    let mut errors: Vec<(String, usize)> = Vec::new();
    for t in tasks {
        let r = tokio::time::timeout(limit_for(file_size * devices as u64), t).await;
        let msg = match r {
            Ok(Ok(Ok(()))) => continue,
            Ok(Ok(Err(msg))) => msg,
            Ok(Err(e)) => format!("task failed: {e}"),
            Err(_) => "no result in time".to_string(),
        };
        failures += 1;
        // Counts by message without the numbers in it, so "busy (… 256 in all …)" lines group together.
        let kind: String = msg.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).collect();
        match errors.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => errors.push((kind, 1)),
        }
    }
    let elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(&out);
    Ok(Crowd { devices, failures, elapsed, errors, connect_elapsed })
}

/// What the loaded-gateway run saw.
pub struct Loaded {
    /// Round trips of the pings sent while the downloads ran, in ms, sorted.
    pub ping_ms: Vec<f64>,
    /// Pings that got no answer (the device's timeout) or failed otherwise.
    pub ping_failures: usize,
    pub download_failures: usize,
    /// All downloads' bytes over the time from their start to the last one's end.
    pub mbps: f64,
}

/// `downloads` device connections each get a `size` file at once while one more connection pings the gateway
/// every 10 ms: how long an answer waits behind the chunks the gateway is sending.
pub async fn pings_under_load(env: &Env, downloads: usize, size: u64) -> anyhow::Result<Loaded> {
    let name = "loaded.bin";
    store_file(env, name, size)?;
    let cfg = DeviceConfig::load(&env.device_toml)?;
    let mut pinger = Client::connect(&cfg).await?;
    pinger.ping().await?;
    let out = env.work.join("loaded-out");
    std::fs::create_dir_all(&out)?;
    // Connected first, so that the pings measure the wait behind chunks, not 100 TLS handshakes at once (the first
    // ping took 275–315 ms when it went out with them).
    let mut clients = Vec::with_capacity(downloads);
    for _ in 0..downloads {
        clients.push(Client::connect(&cfg).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(downloads);
    for (i, mut client) in clients.into_iter().enumerate() {
        let local = out.join(format!("{i}.bin"));
        tasks.push(tokio::spawn(async move { client.get(name, &local, |_| {}).await.map(|o| o.size) }));
    }
    let (mut ping_ms, mut ping_failures) = (Vec::new(), 0);
    let limit = limit_for(size * downloads as u64);
    while !tasks.iter().all(|t| t.is_finished()) {
        if started.elapsed() > limit {
            bail!("the downloads did not end within {limit:?}");
        }
        match pinger.ping().await {
            Ok((rtt, _)) => ping_ms.push(rtt.as_secs_f64() * 1e3),
            Err(e) => {
                eprintln!("loaded: ping failed: {e}");
                ping_failures += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let mut download_failures = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(got)) if got == size => {}
            Ok(Ok(got)) => bail!("a download returned {got} bytes of {size}"),
            Ok(Err(e)) => {
                eprintln!("loaded: download failed: {e}");
                download_failures += 1;
            }
            Err(e) => bail!("download task: {e}"),
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    ping_ms.sort_by(f64::total_cmp);
    Ok(Loaded { ping_ms, ping_failures, download_failures, mbps: mbps(size * downloads as u64, elapsed) })
}
