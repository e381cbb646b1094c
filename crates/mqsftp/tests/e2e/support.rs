#![allow(dead_code)] // Each test binary uses its own subset of these helpers.
//! Shared helpers: a running gateway over a testkit stack, files with known content.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mqsftp_device::{Client, DeviceConfig};
use mqsftp_gateway::{Gateway, GatewayConfig};
use mqsftp_testkit::Stack;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

/// Every await in these tests is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(120);

/// A gateway running in this process against `stack`, stopped on drop.
pub struct RunningGateway {
    pub stats: std::sync::Arc<mqsftp_gateway::GatewayStats>,
    pub id: mqsftp_proto::GatewayId,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), mqsftp_gateway::GatewayError>>>,
}

impl RunningGateway {
    pub async fn start(stack: &Stack) -> RunningGateway {
        RunningGateway::start_with(stack.gateway_config()).await
    }

    /// A gateway with the config file `path`.
    pub async fn start_with(path: &Path) -> RunningGateway {
        let cfg = GatewayConfig::load(path).expect("gateway config loads");
        let gw = tokio::time::timeout(LIMIT, Gateway::connect(cfg)).await.expect("in time").expect("gateway connects");
        let stats = gw.stats();
        let id = gw.id().clone();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gw.run(async move {
            let _ = rx.await;
        }));
        RunningGateway { stats, id, stop: Some(stop), task: Some(task) }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(LIMIT, t)
                .await
                .expect("gateway stops in time")
                .expect("no panic")
                .expect("clean stop");
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// A stack of the kind this test binary runs against: Mosquitto and OpenSSH sshd, or the embedded pair
/// (`crate::EMBEDDED`, set by each test binary).
pub fn start_stack() -> Stack {
    if crate::EMBEDDED {
        Stack::start_embedded().expect("embedded stack starts")
    } else {
        Stack::start().expect("stack starts")
    }
}

/// A stack, a gateway and one device `id` with its config loaded.
pub async fn setup(id: &str) -> (Stack, RunningGateway, DeviceConfig) {
    let stack = start_stack();
    let gw = RunningGateway::start(&stack).await;
    let cfg = DeviceConfig::load(&stack.device(id).expect("device issued")).expect("device config loads");
    (stack, gw, cfg)
}

pub async fn connect(cfg: &DeviceConfig) -> Client {
    tokio::time::timeout(LIMIT, Client::connect(cfg)).await.expect("in time").expect("device connects")
}

/// Runs the `mqsftp` binary in `cwd` with `env` set (and `MQSFTP_PKI_PASSPHRASE` removed unless given).
pub async fn cli(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqsftp"));
    cmd.args(args).current_dir(cwd).kill_on_drop(true).env_remove("MQSFTP_PKI_PASSPHRASE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(LIMIT, cmd.output()).await.expect("mqsftp finishes in time").expect("mqsftp runs")
}

/// Exit status, stdout and stderr of a finished command, for assertion messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Rewrites the TOML file `path`: `edit` changes the table.
pub fn edit_toml(path: &Path, edit: impl FnOnce(&mut toml::Table)) {
    let mut t: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    edit(&mut t);
    std::fs::write(path, toml::to_string(&t).unwrap()).unwrap();
}

/// Sets `[section] key = value` in a TOML table.
pub fn set(t: &mut toml::Table, section: &str, key: &str, value: impl Into<toml::Value>) {
    t.get_mut(section).and_then(toml::Value::as_table_mut).unwrap().insert(key.into(), value.into());
}

/// Deterministic pseudo-random content.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `data` at `rel` inside the device root on the store (as the SFTP server's filesystem).
pub fn put_on_store(stack: &Stack, device: &str, rel: &str, data: &[u8]) -> PathBuf {
    let path = stack.device_root(device).join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, data).unwrap();
    path
}

pub fn sha256_file(path: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// The hash a device client reports by default (BLAKE3), of `data`.
pub fn blake3(data: &[u8]) -> mqsftp_proto::Digest {
    mqsftp_proto::HashAlg::Blake3.digest(data)
}

pub fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Files left in `dir` (to check that nothing partial stays behind).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// A device speaking the protocol by hand (any MQTT client could), for requests the library never sends.
pub struct RawDevice {
    pub link: mqsftp_mqtt::MqttLink,
    pub device: mqsftp_proto::DeviceId,
    pub session: mqsftp_proto::SessionId,
}

impl RawDevice {
    pub async fn connect(cfg: &DeviceConfig, session: &str) -> RawDevice {
        RawDevice::connect_with(cfg, session, Vec::new()).await
    }

    /// Connects subscribed to the session's responses and to `extra` filters.
    pub async fn connect_with(cfg: &DeviceConfig, session: &str, extra: Vec<String>) -> RawDevice {
        let device = cfg.device_id.clone();
        let session = mqsftp_proto::SessionId::new(session).unwrap();
        let mut subscriptions = vec![mqsftp_proto::Topic::response(&device, &session)];
        subscriptions.extend(extra);
        let link = mqsftp_mqtt::MqttLink::connect(
            &cfg.broker,
            mqsftp_mqtt::LinkOptions {
                client_id: format!("raw-{device}-{session}"),
                subscriptions,
                connect_timeout: LIMIT,
                reconnect: false,
                inflight: 16,
                queue: mqsftp_mqtt::LinkOptions::DEFAULT_QUEUE,
            },
        )
        .await
        .unwrap();
        RawDevice { link, device, session }
    }

    pub async fn send(&self, req: &mqsftp_proto::Request) {
        self.publish(mqsftp_proto::Topic::request(&self.device), req.encode()).await;
    }

    pub async fn publish(&self, topic: String, payload: impl Into<Vec<u8>>) {
        use mqsftp_mqtt::rumqttc::QoS;
        self.link.client.publish(topic, QoS::AtLeastOnce, false, payload.into()).await.unwrap();
    }

    /// Sends a request about a running transfer to the gateway holding it.
    pub async fn send_to(&self, gateway: &mqsftp_proto::GatewayId, req: &mqsftp_proto::Request) {
        self.publish(mqsftp_proto::Topic::direct(&self.device, gateway), req.encode()).await;
    }

    pub async fn send_chunk(&self, gateway: &mqsftp_proto::GatewayId, transfer: u64, offset: u64, data: &[u8]) {
        let c = mqsftp_proto::Chunk { transfer, offset, data: bytes::Bytes::copy_from_slice(data) };
        self.publish(mqsftp_proto::Topic::up(&self.device, gateway), c.encode().to_vec()).await;
    }

    /// Sends `put` (request id `id`) and waits for its acceptance: the transfer and the gateway holding it.
    pub async fn put_accepted(&mut self, put: &mqsftp_proto::Request, id: &str) -> (u64, mqsftp_proto::GatewayId) {
        self.send(put).await;
        self.expect(|r| match r {
            mqsftp_proto::Response::PutAccepted { id: got, transfer, gateway, .. } if got == id => {
                Some((transfer, gateway))
            }
            mqsftp_proto::Response::Error { id: Some(got), code, message, .. } if got == id => {
                panic!("put {id} refused: {code}: {message}")
            }
            _ => None,
        })
        .await
    }

    /// The error answering request `id`: its code and message.
    pub async fn error_for(&mut self, id: &str) -> (mqsftp_device::ErrorCode, String) {
        self.expect(|r| match r {
            mqsftp_proto::Response::Error { id: Some(got), code, message, .. } if got == id => Some((code, message)),
            mqsftp_proto::Response::Committed { id: got, .. } if got == id => panic!("{id} was committed"),
            _ => None,
        })
        .await
    }

    /// The next response satisfying `pick`; others (acks, ...) are passed over.
    pub async fn expect<T>(&mut self, mut pick: impl FnMut(mqsftp_proto::Response) -> Option<T>) -> T {
        loop {
            let p = tokio::time::timeout(LIMIT, self.link.incoming.recv()).await.expect("an answer in time").unwrap();
            if let Ok(r) = mqsftp_proto::Response::decode(&p.payload) {
                if let Some(t) = pick(r) {
                    return t;
                }
            }
        }
    }
}

/// Sets `[transfer] key = value` in the stack's gateway config (before the gateway starts).
pub fn set_transfer_option(stack: &Stack, key: &str, value: toml::Value) {
    let path = stack.gateway_config();
    let mut t: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    let transfer = t.entry("transfer").or_insert(toml::Table::new().into()).as_table_mut().unwrap();
    transfer.insert(key.into(), value);
    std::fs::write(path, toml::to_string(&t).unwrap()).unwrap();
}

/// Temporary upload files left anywhere under `dir`.
pub fn part_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".mqsftp-part") {
                out.push(p);
            }
        }
    }
    out
}

/// Writes `text` as the stack's policy file and points gateway.toml's `[policy] file` at it.
pub fn set_policy(stack: &Stack, text: &str) -> PathBuf {
    let policy = stack.dir().join("policy.toml");
    std::fs::write(&policy, text).unwrap();
    let path = stack.gateway_config();
    let mut t: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    let mut section = toml::Table::new();
    section.insert("file".into(), policy.to_str().unwrap().into());
    t.insert("policy".into(), section.into());
    std::fs::write(path, toml::to_string(&t).unwrap()).unwrap();
    policy
}

/// A gateway running as its own process (`mqsftp gateway`), so that it can be SIGKILLed like a crashed one.
pub struct GatewayProcess {
    child: tokio::process::Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl GatewayProcess {
    pub async fn spawn(stack: &Stack) -> GatewayProcess {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqsftp"))
            .args(["gateway", "--config"])
            .env("RUST_LOG", "info")
            .arg(stack.gateway_config())
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("mqsftp gateway starts");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let ready = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                // Written to a pipe (a file, journald), not a terminal: no colour codes in the way.
                assert!(!line.contains('\x1b'), "terminal escape codes in the gateway's log: {line:?}");
                if line.contains("gateway connected") {
                    return true;
                }
            }
            false
        };
        assert!(tokio::time::timeout(LIMIT, ready).await.expect("gateway ready in time"), "gateway exited early");
        // Keep reading its log (shown with a failing test's output) so that it never blocks on a full pipe.
        let pid = child.id().unwrap_or(0);
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[gateway {pid}] {line}");
                kept.lock().unwrap().push(line);
            }
        });
        GatewayProcess { child, log }
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("gateway running")
    }

    /// Sends SIGHUP (re-read the policy file).
    pub fn hangup(&self) {
        let pid = self.child.id().expect("gateway running").to_string();
        let ok = std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success();
        assert!(ok, "kill -HUP {pid}");
    }

    /// Waits until the gateway's log has a line containing `needle`, and returns it.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let found = async {
            loop {
                if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                    return l.clone();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(LIMIT, found).await.unwrap_or_else(|_| panic!("gateway never logged {needle:?}"))
    }

    /// SIGKILL: no goodbye to the broker, no cleanup on the store.
    pub async fn kill(mut self) {
        self.child.start_kill().unwrap();
        let _ = tokio::time::timeout(LIMIT, self.child.wait()).await.expect("killed gateway exits");
    }
}

/// A device config with a short timeout, so that a silent gateway is noticed quickly.
pub fn device_with_timeout(stack: &Stack, id: &str, timeout: &str) -> DeviceConfig {
    let path = stack.device(id).unwrap();
    let mut t: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    let mut transfer = toml::Table::new();
    transfer.insert("timeout".into(), timeout.into());
    t.insert("transfer".into(), transfer.into());
    std::fs::write(&path, toml::to_string(&t).unwrap()).unwrap();
    DeviceConfig::load(&path).unwrap()
}

/// Starts `client.put(local, remote)` on a task; the watch follows the bytes acknowledged (never hold its borrow
/// across an await: that blocks the transfer).
pub fn spawn_put(
    mut client: mqsftp_device::Client,
    local: PathBuf,
    remote: &str,
) -> (
    tokio::task::JoinHandle<Result<mqsftp_device::PutOutcome, mqsftp_device::DeviceError>>,
    tokio::sync::watch::Receiver<u64>,
) {
    let (tx, done) = tokio::sync::watch::channel(0u64);
    let remote = remote.to_string();
    let task = tokio::spawn(async move {
        client
            .put(&local, &remote, false, |p| {
                tx.send_replace(p.done);
            })
            .await
    });
    (task, done)
}

/// Starts `client.get(remote, target)` on a task; the watch follows the bytes received, as for [`spawn_put`].
pub fn spawn_get(
    mut client: mqsftp_device::Client,
    remote: &str,
    target: PathBuf,
) -> (
    tokio::task::JoinHandle<Result<mqsftp_device::GetOutcome, mqsftp_device::DeviceError>>,
    tokio::sync::watch::Receiver<u64>,
) {
    let (tx, done) = tokio::sync::watch::channel(0u64);
    let remote = remote.to_string();
    let task = tokio::spawn(async move {
        client
            .get(&remote, &target, |p| {
                tx.send_replace(p.done);
            })
            .await
    });
    (task, done)
}

/// The protocol error code of a failed request (panics on any other kind of failure).
pub fn remote_code(e: mqsftp_device::DeviceError) -> mqsftp_device::ErrorCode {
    match e {
        mqsftp_device::DeviceError::Remote { code, .. } => code,
        other => panic!("expected a remote error, got {other}"),
    }
}

/// Processes holding the file at `path` open, under whatever name they opened it (from `/proc/*/fd`, as far as
/// this user may look): compared by device and inode, so a handle opened under a name since renamed or removed
/// (an upload's temporary file, linked to its target and unlinked) counts.
pub fn holders(path: &std::path::Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut pids = Vec::new();
    for proc_dir in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = proc_dir.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(proc_dir.path().join("fd")) else { continue };
        let same = |fd: std::fs::DirEntry| {
            std::fs::metadata(fd.path()).is_ok_and(|m| (m.dev(), m.ino()) == (file.dev(), file.ino()))
        };
        if fds.flatten().any(same) {
            pids.push(pid);
        }
    }
    pids
}
