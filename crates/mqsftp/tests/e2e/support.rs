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
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), mqsftp_gateway::GatewayError>>>,
}

impl RunningGateway {
    pub async fn start(stack: &Stack) -> RunningGateway {
        let cfg = GatewayConfig::load(stack.gateway_config()).expect("gateway config loads");
        let gw = tokio::time::timeout(LIMIT, Gateway::connect(cfg)).await.expect("in time").expect("gateway connects");
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gw.run(async move {
            let _ = rx.await;
        }));
        RunningGateway { stop: Some(stop), task: Some(task) }
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

/// A stack, a gateway and one device `id` with its config loaded.
pub async fn setup(id: &str) -> (Stack, RunningGateway, DeviceConfig) {
    let stack = Stack::start().expect("stack starts");
    let gw = RunningGateway::start(&stack).await;
    let cfg = DeviceConfig::load(&stack.device(id).expect("device issued")).expect("device config loads");
    (stack, gw, cfg)
}

pub async fn connect(cfg: &DeviceConfig) -> Client {
    tokio::time::timeout(LIMIT, Client::connect(cfg)).await.expect("in time").expect("device connects")
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
