use std::time::Duration;

use tokio::sync::watch;

use crate::support::LIMIT;

/// Whether the full sizes were asked for (`MQSFTP_FAULT_SCALE=full`); CI runs the scaled-down sizes.
pub fn full() -> bool {
    std::env::var("MQSFTP_FAULT_SCALE").is_ok_and(|v| v == "full")
}

/// `full_size` at full scale, `ci_size` otherwise.
pub fn scaled<T>(ci_size: T, full_size: T) -> T {
    if full() {
        full_size
    } else {
        ci_size
    }
}

pub const MIB: usize = 1024 * 1024;

/// Window × chunk size of the default gateway config: the most a sender has in flight.
pub const WINDOW_BYTES: u64 = {
    let p = mqsftp_proto::StreamParams::DEFAULT;
    p.window as u64 * p.chunk_size as u64
};

/// A bound for awaits whose work grows with the scale (a whole large transfer).
pub fn long_limit() -> Duration {
    scaled(LIMIT, LIMIT * 8)
}

/// Waits until the transfer has done `at` bytes; if it ended first, fails with its result.
pub async fn reach<T: std::fmt::Debug>(
    done: &mut watch::Receiver<u64>,
    at: u64,
    task: &mut tokio::task::JoinHandle<T>,
) {
    // A bool, not the borrow: holding the watch borrow would block the sender (the transfer).
    let reached = tokio::time::timeout(LIMIT, done.wait_for(|d| *d >= at)).await.expect("progress").is_ok();
    if !reached {
        let ended = task.await.expect("no panic");
        panic!("the transfer ended before {at} bytes: {ended:?}");
    }
}

/// Polls `cond` every 20 ms until it holds, for at most `within`; returns how long it took.
pub async fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// The processes below `pid` (children, grandchildren, ...), from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after its closing parenthesis.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse::<u32>().ok()) {
            parent_of.push((p, ppid));
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for &(child, _) in parent_of.iter().filter(|(_, pp)| *pp == p) {
            out.push(child);
            todo.push(child);
        }
    }
    out
}

/// Sends `signal` (e.g. "KILL", "STOP", "CONT") to `pid`, a process this test started (or one of its children).
pub fn signal(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().unwrap();
    assert!(ok.success(), "kill -{signal} {pid}");
}

/// SIGKILLs sshd with every session it serves (the listener alone would leave the sessions running) and starts it
/// again.
pub fn restart_sshd_hard(stack: &mut mqsftp_testkit::Stack) {
    let pid = stack.sshd_pid().expect("sshd runs");
    let sessions = descendants(pid);
    stack.kill_sshd().unwrap();
    for p in sessions {
        let _ = std::process::Command::new("kill").args(["-KILL", &p.to_string()]).status();
    }
    stack.start_sshd().unwrap();
}

/// An MQTT client with the gateway's certificate (the broker's ACL lets the gateway read and write every mqsftp
/// topic), subscribed to `filters`: for tests that play the gateway's part by hand, or forge what only a gateway
/// may publish (chunks on a device's `down` topic).
pub async fn gateway_identity(
    stack: &mqsftp_testkit::Stack,
    name: &str,
    filters: Vec<String>,
) -> mqsftp_mqtt::MqttLink {
    let cfg = mqsftp_gateway::GatewayConfig::load(stack.gateway_config()).expect("gateway config loads");
    let options = mqsftp_mqtt::LinkOptions {
        client_id: format!("test-{name}"),
        subscriptions: filters,
        connect_timeout: LIMIT,
        reconnect: false,
        inflight: 32,
        queue: mqsftp_mqtt::LinkOptions::DEFAULT_QUEUE,
    };
    tokio::time::timeout(LIMIT, mqsftp_mqtt::MqttLink::connect(&cfg.broker, options))
        .await
        .expect("in time")
        .expect("the gateway's identity connects")
}

/// Publishes `payload` on `topic` (QoS 1) from a [`gateway_identity`] link.
pub async fn publish(link: &mqsftp_mqtt::MqttLink, topic: String, payload: Vec<u8>) {
    use mqsftp_mqtt::rumqttc::QoS;
    link.client.publish(topic, QoS::AtLeastOnce, false, payload).await.expect("publish queued");
}

/// The requests a device publishes (`req` and `req/{gateway}`), as a gateway sees them: the filter to pass to
/// [`gateway_identity`].
pub fn device_requests(device: &str) -> String {
    format!("{}/#", mqsftp_proto::Topic::request(&mqsftp_proto::DeviceId::new(device).unwrap()))
}

/// The next request a device published, as a [`gateway_identity`] link subscribed to [`device_requests`] sees it
/// (acks and cancels included), bounded in time.
pub async fn next_request(link: &mut mqsftp_mqtt::MqttLink) -> mqsftp_proto::Request {
    loop {
        let p = tokio::time::timeout(LIMIT, link.incoming.recv()).await.expect("a request in time").expect("link up");
        if let Ok(r) = mqsftp_proto::Request::decode(&p.payload) {
            return r;
        }
    }
}
