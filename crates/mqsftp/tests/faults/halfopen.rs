use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::*;

/// Sets `[section] key = value` in the TOML file at `path`.
fn set_option(path: &Path, section: &str, key: &str, value: toml::Value) {
    let mut t: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    let s = t.entry(section).or_insert(toml::Table::new().into()).as_table_mut().unwrap();
    s.insert(key.into(), value);
    std::fs::write(path, toml::to_string(&t).unwrap()).unwrap();
}

/// Issue 7, scenario 7a: the broker stops answering without closing (SIGSTOP) during a download. The gateway's
/// MQTT keepalive (2 s) notices within twice the keepalive; after SIGCONT the gateway and the device reconnect and
/// the download resumes, byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_is_detected_and_the_transfer_resumes() {
    const KEEPALIVE: Duration = Duration::from_secs(2);
    let size = scaled(64 * MIB, 256 * MIB);
    let stack = mqsftp_testkit::Stack::start().unwrap();
    set_option(stack.gateway_config(), "broker", "keep_alive", "2s".into());
    device_with_timeout(&stack, "hobroker", "10s");
    let device_toml = stack.pki_dir().join("devices/hobroker/device.toml");
    set_option(&device_toml, "broker", "keep_alive", "2s".into());
    let cfg = mqsftp_device::DeviceConfig::load(&device_toml).unwrap();
    let gw = GatewayProcess::spawn(&stack).await;
    let data = content(size, 103);
    put_on_store(&stack, "hobroker", "f.bin", &data);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("f.bin");
    let client = connect(&cfg).await;
    let (mut task, mut done) = spawn_get(client, "f.bin", target.clone());
    reach(&mut done, size as u64 * 3 / 10, &mut task).await;
    let broker = stack.broker_pid().expect("broker runs");
    signal(broker, "STOP");
    let stopped = Instant::now();
    gw.wait_for_log("MQTT connection lost").await;
    let detected = stopped.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(broker, "CONT");
    let outcome = tokio::time::timeout(long_limit(), task).await.expect("in time").expect("no panic");
    let outcome = outcome.expect("the download resumes after the broker answers again");
    assert_eq!(sha256_file(&target), sha256(&data));
    println!(
        "broker silent (SIGSTOP) during a {} MiB get, MQTT keepalive {KEEPALIVE:?}: gateway detected it after {:.2} s \
         ({:.2} x keepalive); resumed after SIGCONT, {} bytes received twice, byte-identical",
        size >> 20,
        detected.as_secs_f64(),
        detected.as_secs_f64() / KEEPALIVE.as_secs_f64(),
        outcome.resent_bytes
    );
    // Polling the log adds up to 50 ms; rumqttc sends its ping one keepalive after the last packet and fails the
    // connection when the next tick finds it unanswered.
    assert!(detected <= KEEPALIVE * 2 + Duration::from_millis(500), "detected after {detected:?}");
    gw.kill().await;
}

/// The SSH keepalive of the stacks of scenarios 7b and 7c: one may go unanswered.
const KEEPALIVE: Duration = Duration::from_secs(1);

/// A stack whose gateway checks its SFTP session every [`KEEPALIVE`] (one may go unanswered) and gives a store
/// request 10 s, with a device `device` that waits 10 s, and the gateway running.
async fn stack_with_sftp_keepalive(
    device: &str,
) -> (mqsftp_testkit::Stack, mqsftp_device::DeviceConfig, GatewayProcess) {
    let stack = mqsftp_testkit::Stack::start().unwrap();
    set_option(stack.gateway_config(), "sftp", "keepalive", "1s".into());
    set_option(stack.gateway_config(), "sftp", "keepalive_max", 1.into());
    set_option(stack.gateway_config(), "sftp", "request_timeout", "10s".into());
    let cfg = device_with_timeout(&stack, device, "10s");
    let gw = GatewayProcess::spawn(&stack).await;
    (stack, cfg, gw)
}

/// The sshd processes serving the gateway's SFTP session (children of the stack's sshd).
fn sftp_sessions(stack: &mqsftp_testkit::Stack) -> Vec<u32> {
    let sessions = descendants(stack.sshd_pid().expect("sshd runs"));
    assert!(!sessions.is_empty(), "the gateway's SFTP session has its sshd processes");
    sessions
}

fn signal_all(pids: &[u32], sig: &str) {
    for &p in pids {
        signal(p, sig);
    }
}

/// Issue 7, scenario 7b: the sshd processes serving the gateway's SFTP session stop answering without closing
/// (SIGSTOP) during an upload. The SSH keepalive (1 s, one may go unanswered) drops the dead session within about
/// twice the keepalive; the upload's pending writes fail, the device is told `unavailable`, resumes, and the
/// gateway continues on a new session from what the store holds. Byte-identical, one file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_sftp_session_is_detected_and_the_upload_resumes() {
    let size = scaled(64 * MIB, 256 * MIB);
    let (stack, cfg, gw) = stack_with_sftp_keepalive("hosshd").await;
    let data = content(size, 104);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("f.bin");
    std::fs::write(&local, &data).unwrap();
    let client = connect(&cfg).await;
    let (mut task, mut done) = spawn_put(client, local.clone(), "f.bin");
    reach(&mut done, size as u64 * 3 / 10, &mut task).await;
    let sessions = sftp_sessions(&stack);
    signal_all(&sessions, "STOP");
    let stopped = Instant::now();
    gw.wait_for_log("write to the store failed").await;
    let detected = stopped.elapsed();
    signal_all(&sessions, "CONT");
    let outcome = tokio::time::timeout(long_limit(), task).await.expect("in time").expect("no panic");
    let outcome = outcome.expect("the upload resumes on a new SFTP session");
    let root = stack.device_root("hosshd");
    assert_eq!(sha256_file(&root.join("f.bin")), sha256(&data));
    assert_eq!(entries(&root), vec!["f.bin".to_string()], "one file, no temporary file");
    println!(
        "SFTP session silent (sshd session processes SIGSTOPped) during a {} MiB put, SSH keepalive {KEEPALIVE:?} \
         (1 may be missed): gateway detected it after {:.2} s ({:.2} x keepalive); resumed on a new session, {} \
         bytes sent again, byte-identical",
        size >> 20,
        detected.as_secs_f64(),
        detected.as_secs_f64() / KEEPALIVE.as_secs_f64(),
        outcome.resent_bytes
    );
    assert!(detected <= KEEPALIVE * 2 + Duration::from_millis(1500), "detected after {detected:?}");
    gw.kill().await;
}

/// Issue 7, scenario 7c: the sshd processes serving the gateway's SFTP session stop answering without closing
/// (SIGSTOP) during a download. The SSH keepalive (1 s, one may go unanswered) drops the dead session; the pending
/// store read fails (`read from the store failed`), the device is told `unavailable`, keeps its part file, asks
/// again after a pause, and the gateway continues on a new session from the offset the device holds.
/// Byte-identical, nothing else left beside the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_sftp_session_is_detected_and_the_download_resumes() {
    let size = scaled(64 * MIB, 256 * MIB);
    let (stack, cfg, gw) = stack_with_sftp_keepalive("hoget").await;
    let data = content(size, 106);
    put_on_store(&stack, "hoget", "f.bin", &data);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("f.bin");
    let client = connect(&cfg).await;
    let (mut task, mut done) = spawn_get(client, "f.bin", target.clone());
    reach(&mut done, size as u64 * 3 / 10, &mut task).await;
    let sessions = sftp_sessions(&stack);
    signal_all(&sessions, "STOP");
    let stopped = Instant::now();
    let held_when_stopped = *done.borrow();
    gw.wait_for_log("read from the store failed").await;
    let detected = stopped.elapsed();
    signal_all(&sessions, "CONT");
    let outcome = tokio::time::timeout(long_limit(), task).await.expect("in time").expect("no panic");
    let outcome = outcome.expect("the download resumes on a new SFTP session");
    assert_eq!(sha256_file(&target), sha256(&data));
    assert_eq!(entries(out.path()), vec!["f.bin".to_string()], "one file, no part file");
    assert_eq!(outcome.restarts, 0, "resumed from the part file, not started again");
    println!(
        "SFTP session silent (sshd session processes SIGSTOPped) during a {} MiB get at {} MiB, SSH keepalive \
         {KEEPALIVE:?} (1 may be missed): gateway detected it after {:.2} s ({:.2} x keepalive); the device was told \
         `unavailable` and resumed from its part file on a new session, {} bytes received twice, byte-identical",
        size >> 20,
        held_when_stopped >> 20,
        detected.as_secs_f64(),
        detected.as_secs_f64() / KEEPALIVE.as_secs_f64(),
        outcome.resent_bytes
    );
    assert!(detected <= KEEPALIVE * 2 + Duration::from_millis(1500), "detected after {detected:?}");
    assert!(
        outcome.resent_bytes <= 2 * WINDOW_BYTES,
        "at most what was in flight is received again: {} bytes",
        outcome.resent_bytes
    );
    gw.kill().await;
}

/// The device library's half of scenario 7c, against a gateway played by hand so that every answer is exact: the
/// gateway answers `unavailable` (it lost the store) in the middle of a download, and again to the first `get` that
/// resumes it. Each time the device keeps its part file and asks again after a pause, with the offset it holds;
/// the download then completes byte-identical and nothing is received twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_told_unavailable_resumes_from_its_part_file_after_a_pause() {
    use mqsftp_proto::{ErrorCode, Request, Response, Topic};
    /// The device library's pause after `unavailable` (`STORE_RETRY_PAUSE`).
    const PAUSE: Duration = Duration::from_millis(500);
    const C: usize = 64 * 1024;
    let stack = mqsftp_testkit::Stack::start().unwrap();
    let cfg = device_with_timeout(&stack, "unavail", "10s");
    let mut gw = gateway_identity(&stack, "unavail", vec![device_requests("unavail")]).await;
    let gateway = mqsftp_proto::GatewayId::new("byhand").unwrap();
    let data = content(10 * C + 5, 105);
    let (size, half) = (data.len() as u64, 5 * C as u64);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("f.bin");
    let (task, _done) = spawn_get(connect(&cfg).await, "f.bin", target.clone());

    // The next `get`: its request id, session and offset (acks of a finished window and the device's cancel of
    // the failed transfer are passed over). A device that gave up instead asks nothing more: 20 s is plenty.
    async fn next_get(gw: &mut mqsftp_mqtt::MqttLink) -> (String, mqsftp_proto::SessionId, u64) {
        let get = async {
            loop {
                if let Request::Get { id, session, offset, .. } = next_request(gw).await {
                    return (id, session, offset);
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), get).await.expect("the device asks for the file again")
    }
    let device = cfg.device_id.clone();
    let (id, session, offset) = next_get(&mut gw).await;
    assert_eq!(offset, 0, "a fresh download");
    let (res, down) = (Topic::response(&device, &session), Topic::down(&device, &session));
    let accepted = |id: String, transfer| Response::GetAccepted {
        id,
        transfer,
        gateway: gateway.clone(),
        size,
        chunk_size: C as u32,
        window: 16,
        hash: mqsftp_proto::HashAlg::Blake3,
    };
    let unavailable = |id: String, transfer| Response::Error {
        id: Some(id),
        transfer,
        code: ErrorCode::Unavailable,
        message: "the file store is unavailable".into(),
    };
    // Transfer 1: half the file, acknowledged, then the store is lost.
    publish(&gw, res.clone(), accepted(id.clone(), 1).encode()).await;
    send_chunks(&gw, &down, 1, &data, 0..half as usize, C).await;
    while !matches!(next_request(&mut gw).await, Request::Ack { transfer: 1, next } if next == half) {}
    publish(&gw, res.clone(), unavailable(id, Some(1)).encode()).await;
    let told = Instant::now();
    // The first resume is refused too: the store is not back yet.
    let (id, _, offset1) = next_get(&mut gw).await;
    let pause1 = told.elapsed();
    publish(&gw, res.clone(), unavailable(id, None).encode()).await;
    let told = Instant::now();
    // The second gets the rest.
    let (id, _, offset2) = next_get(&mut gw).await;
    let pause2 = told.elapsed();
    publish(&gw, res.clone(), accepted(id, 2).encode()).await;
    send_chunks(&gw, &down, 2, &data, half as usize..data.len(), C).await;
    let done = Response::GetDone { transfer: 2, size, digest: mqsftp_proto::HashAlg::Blake3.digest(&data).into() };
    publish(&gw, res.clone(), done.encode()).await;

    let outcome = tokio::time::timeout(LIMIT, task).await.expect("in time").expect("no panic");
    let outcome = outcome.expect("the download resumes once the store is back");
    println!(
        "download told `unavailable` at {half} of {size} bytes, then again on its first resume: resumed after \
         {:.2} s and {:.2} s with offsets {offset1} and {offset2}; {} bytes received twice, byte-identical",
        pause1.as_secs_f64(),
        pause2.as_secs_f64(),
        outcome.resent_bytes
    );
    assert_eq!((offset1, offset2), (half, half), "each resume asks from the bytes held in the part file");
    assert!(pause1 >= PAUSE && pause2 >= PAUSE, "paced: {pause1:?}, {pause2:?}");
    assert_eq!(std::fs::read(&target).unwrap(), data);
    assert_eq!(entries(out.path()), vec!["f.bin".to_string()], "one file, no part file");
    assert_eq!(outcome.resent_bytes, 0);
}

/// Publishes `data[range]` as chunks of `chunk` bytes of `transfer` on `down`.
async fn send_chunks(
    link: &mqsftp_mqtt::MqttLink,
    down: &str,
    transfer: u64,
    data: &[u8],
    range: std::ops::Range<usize>,
    chunk: usize,
) {
    for (k, piece) in data[range.clone()].chunks(chunk).enumerate() {
        let offset = (range.start + k * chunk) as u64;
        let c = mqsftp_proto::Chunk { transfer, offset, data: bytes::Bytes::copy_from_slice(piece) };
        publish(link, down.to_string(), c.encode().to_vec()).await;
    }
}

/// The bytes waiting in the kernel between the gateway `gateway` and the broker listening on `broker_port`: the
/// send queues of the gateway's connections to that port plus the receive queues of the broker's ends of them
/// (`/proc/net/tcp` and `tcp6`, `tx_queue` and `rx_queue`). On loopback that is everything written by the gateway
/// and not yet read by the broker.
fn queued_toward_broker(gateway: u32, broker_port: u16) -> u64 {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{gateway}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(String::from))
        .collect();
    // (local port, remote port, tx_queue, rx_queue, inode) of every TCP socket.
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |addr: &str| u16::from_str_radix(addr.rsplit_once(':').unwrap().1, 16).unwrap();
            let (tx, rx) = f[4].split_once(':').unwrap();
            let queue = |q: &str| u64::from_str_radix(q, 16).unwrap();
            sockets.push((port(f[1]), port(f[2]), queue(tx), queue(rx), f[9].to_string()));
        }
    }
    let links: Vec<_> =
        sockets.iter().filter(|s| s.1 == broker_port && inodes.contains(&s.4)).map(|s| (s.0, s.2)).collect();
    assert!(!links.is_empty(), "the gateway (pid {gateway}) has a connection to the broker's port {broker_port}");
    links
        .iter()
        .map(|&(gateway_port, sent)| {
            let broker_end = sockets.iter().find(|s| s.0 == broker_port && s.1 == gateway_port);
            sent + broker_end.expect("the broker's end of the gateway's connection").3
        })
        .sum()
}

/// Runs eight downloads (two devices, four each, each with a window of 16 chunks: 32 MiB the gateway may send),
/// stops the broker (SIGSTOP) once all eight are receiving, and returns the bytes left waiting in the kernel
/// between gateway and broker once that stops growing (see [`queued_toward_broker`]). The broker is then resumed
/// and every download must complete, byte-identical.
async fn queued_while_the_broker_stops_reading(broker_window: u16) -> u64 {
    const DEVICES: usize = 2;
    const PER_DEVICE: usize = 4;
    let size = 24 * MIB;
    let stack = mqsftp_testkit::Stack::start().unwrap();
    set_transfer_option(&stack, "broker_window", i64::from(broker_window).into());
    set_transfer_option(&stack, "window", 16.into());
    let gw = GatewayProcess::spawn(&stack).await;
    let data = content(size, 104);
    let out = tempfile::tempdir().unwrap();
    let mut gets = Vec::new();
    for d in 0..DEVICES {
        let id = format!("bw{broker_window}d{d}");
        put_on_store(&stack, &id, "f.bin", &data);
        let cfg = device_with_timeout(&stack, &id, "60s");
        for g in 0..PER_DEVICE {
            let target = out.path().join(format!("{id}-{g}.bin"));
            gets.push((spawn_get(connect(&cfg).await, "f.bin", target.clone()), target));
        }
    }
    for ((task, done), _) in &mut gets {
        reach(done, mqsftp_proto::StreamParams::DEFAULT.chunk_size as u64, task).await;
    }
    let broker = stack.broker_pid().expect("broker runs");
    signal(broker, "STOP");
    // Sample every 100 ms until two seconds pass without change (the gateway has written all it will).
    let (mut last, mut still_since) = (queued_toward_broker(gw.pid(), stack.mqtt_port()), Instant::now());
    let started = Instant::now();
    while still_since.elapsed() < Duration::from_secs(2) {
        assert!(started.elapsed() < Duration::from_secs(20), "the queue toward the broker kept changing");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = queued_toward_broker(gw.pid(), stack.mqtt_port());
        if now != last {
            (last, still_since) = (now, Instant::now());
        }
    }
    signal(broker, "CONT");
    for ((task, _), target) in gets {
        let outcome = tokio::time::timeout(long_limit(), task).await.expect("in time").expect("no panic");
        outcome.expect("the download completes after the broker reads again");
        assert_eq!(sha256_file(&target), sha256(&data), "{}", target.display());
    }
    gw.kill().await;
    last
}

/// `[transfer] broker_window` (default 4) bounds what the gateway leaves between itself and the broker, so an
/// answer never waits behind more than a few chunks there (docs/performance.md, "Answers under load"). With the
/// broker stopped under eight downloads, the bytes waiting in the kernel toward it stay within 4 chunks (plus MQTT
/// and TLS framing and a few small packets); with a window of 64 (the gateway's earlier fixed in-flight limit) the
/// same run leaves megabytes there, so the measure can tell the two apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_window_bounds_what_waits_toward_a_stopped_broker() {
    let chunk = u64::from(mqsftp_proto::StreamParams::DEFAULT.chunk_size);
    // A chunk's message: the payload plus its header, topic and MQTT framing (under 1 KiB), in TLS records of 16
    // KiB with 22 bytes each; plus 16 KiB for acknowledgements, pings and answers.
    let bound = |window: u64| window * (chunk + 1024) * (16384 + 22) / 16384 + 16 * 1024;
    let with_4 = queued_while_the_broker_stops_reading(4).await;
    let with_64 = queued_while_the_broker_stops_reading(64).await;
    println!(
        "broker stopped under 8 downloads: {with_4} bytes waiting toward it with a broker window of 4 (bound {}), \
         {with_64} with 64",
        bound(4)
    );
    assert!(with_4 <= bound(4), "{with_4} bytes waiting toward the broker, more than 4 chunks ({})", bound(4));
    assert!(with_4 >= chunk, "the gateway had a chunk waiting toward the stopped broker: {with_4} bytes");
    assert!(with_64 > 2 * bound(4), "a window of 64 leaves more waiting ({with_64} bytes): the measure is blind");
}
