//! `gateway.toml`: parsed into types that cannot hold a bad value, with relative paths resolved against the
//! directory of the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mqsftp_mqtt::BrokerConfig;
use mqsftp_proto::{DeviceId, RelPath};
use serde::Deserialize;

/// Placeholder for the device id in [`StoreConfig::device_root`].
pub const DEVICE_PLACEHOLDER: &str = "{device}";

/// Why a gateway config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not valid TOML or has a wrong key or value.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is out of range.
    #[error("{path}: {key} = {value}: {reason}")]
    Invalid { path: PathBuf, key: &'static str, value: String, reason: String },
    /// The policy file it names was refused.
    #[error(transparent)]
    Policy(crate::policy::PolicyError),
}

/// The whole `gateway.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The MQTT broker.
    pub broker: BrokerConfig,
    /// The SFTP store.
    pub sftp: SftpConfig,
    /// Where device files live on the store.
    pub store: StoreConfig,
    /// Transfer tuning.
    #[serde(default)]
    pub transfer: TransferConfig,
    /// Per-device policy (see `policy.rs`).
    #[serde(default)]
    pub policy: PolicyConfig,
    /// How the `mqsftp gateway` process runs its tasks.
    #[serde(default)]
    pub runtime: RuntimeConfig,
}

/// The `[runtime]` section: the threads of the `mqsftp gateway` process (a program that embeds the gateway brings
/// its own runtime).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads running the gateway's tasks: 1 runs them all on one thread, 0 one per CPU core, N that many.
    ///
    /// One by default: every transfer passes through one broker connection and one SSH connection, each a single
    /// task, so more threads mostly add wake-ups between them. Measured on 2 cores (docs/performance.md): one
    /// thread took 0.1 ms off a 1 KiB get and used 15–25 % less gateway CPU per GiB, at the same throughput. More
    /// threads pay off when the gateway's own work (TLS, SSH crypto, hashing) for many devices at once needs more
    /// than one core.
    pub threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { threads: 1 }
    }
}

/// Most threads `[runtime] threads` may ask for.
pub const MAX_RUNTIME_THREADS: usize = 1024;

/// The `[policy]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The policy file; without one every device gets its own root, every operation and the `[transfer]` limits.
    /// Re-read on SIGHUP.
    pub file: Option<PathBuf>,
}

/// The `[sftp]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftpConfig {
    /// Server host name or IP (as listed in known_hosts).
    pub host: String,
    /// Server port.
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    /// Login user.
    pub user: String,
    /// OpenSSH private key file (possibly encrypted).
    pub key: PathBuf,
    /// File holding the passphrase of an encrypted `key` (one line).
    pub passphrase_file: Option<PathBuf>,
    /// Environment variable holding the passphrase of an encrypted `key`.
    pub passphrase_env: Option<String>,
    /// known_hosts file that must list the server's host key.
    pub known_hosts: PathBuf,
    /// Connect + authenticate time limit.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Interval of SSH keepalives on the store connection (sent when it is otherwise quiet).
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    pub keepalive: Duration,
    /// Keepalives that may go unanswered in a row; one more and the connection is dropped as dead (a server that
    /// stopped answering without closing), and the next use reconnects.
    #[serde(default = "default_keepalive_max")]
    pub keepalive_max: usize,
    /// Time limit of one SFTP request (whole seconds, at least 1); a request that takes longer fails and the
    /// session is dropped.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

fn default_ssh_port() -> u16 {
    22
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_keepalive() -> Duration {
    Duration::from_secs(15)
}
fn default_keepalive_max() -> usize {
    3
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The `[store]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Root of each device on the server, with `{device}` standing for the device id.
    pub device_root: String,
}

/// The directory that holds the roots made from a root template: the part before `{device}` (`.` when empty).
pub(crate) fn roots_dir_of(template: &str) -> &str {
    let base = template.split(DEVICE_PLACEHOLDER).next().unwrap_or("").trim_end_matches('/');
    if base.is_empty() {
        "."
    } else {
        base
    }
}

impl StoreConfig {
    /// The store path of `rel` inside `device`'s root.
    pub fn path_of(&self, device: &DeviceId, rel: &RelPath) -> String {
        crate::policy::join(&self.root_of(device), rel)
    }

    /// The directory that holds all device roots: the part of `device_root` before `{device}` (`.` when empty).
    pub fn roots_dir(&self) -> &str {
        roots_dir_of(&self.device_root)
    }

    /// `device`'s root on the store.
    pub fn root_of(&self, device: &DeviceId) -> String {
        self.device_root.replace(DEVICE_PLACEHOLDER, device.as_str())
    }
}

/// The `[transfer]` section.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    /// Data bytes per chunk.
    pub chunk_size: u32,
    /// Most chunks one transfer keeps in flight before waiting for an acknowledgement ([`WINDOW`] by default).
    /// One transfer moves at most `window` chunks per round trip between gateway and device (through the broker):
    /// raise it too for a broker far away.
    pub window: u32,
    /// Chunks in flight over all transfers together ([`SHARED_WINDOW`] by default): each transfer gets this
    /// divided by the number running, at least 2 and at most `window`. What is in flight waits in the broker ahead
    /// of the answers to its device, so this bounds how long answers wait under load while a lone transfer still
    /// gets the whole `window`.
    pub shared_window: u32,
    /// Messages (chunks and answers, of all transfers together) the gateway publishes before the broker has
    /// acknowledged them ([`BROKER_WINDOW`] by default). It bounds what an answer finds queued ahead of it between
    /// the gateway and the broker, and it bounds the gateway's throughput to the broker at `broker_window` chunks
    /// per round trip to it: raise it for a broker far away. Measured with the broker 20 ms away, eight downloads
    /// moved 36–38 MB/s together at 4 and 172–204 MB/s at 32; one download also needs `window` raised
    /// (docs/performance.md, "A broker far from the gateway"). Answers do not wait for a place in it.
    pub broker_window: u16,
    /// Resend the window when it has not moved for this long.
    #[serde(with = "humantime_serde")]
    pub retransmit_after: Duration,
    /// Abandon a transfer when the device has not acknowledged anything for this long.
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
    /// Concurrent transfers over all devices.
    pub max_transfers: usize,
    /// Concurrent transfers per device.
    pub max_transfers_per_device: usize,
    /// Largest file a device may upload, in bytes.
    pub max_file_size: u64,
    /// An upload that receives nothing for this long is abandoned and its temporary file removed.
    #[serde(with = "humantime_serde")]
    pub upload_expiry: Duration,
}

impl Default for TransferConfig {
    fn default() -> Self {
        let p = mqsftp_proto::StreamParams::default();
        Self {
            chunk_size: p.chunk_size,
            window: WINDOW,
            shared_window: SHARED_WINDOW,
            broker_window: BROKER_WINDOW,
            retransmit_after: p.retransmit_after,
            give_up_after: p.give_up_after,
            max_transfers: 256,
            max_transfers_per_device: 4,
            max_file_size: 16 << 30,
            upload_expiry: Duration::from_secs(600),
        }
    }
}

/// Default of `[transfer] window`: 8 chunks of 255 KiB kept a lone 1 GiB download 17 % faster than 4 on the
/// benchmark's two cores (docs/performance.md, "Windows shared among the transfers running").
pub const WINDOW: u32 = mqsftp_proto::StreamParams::DEFAULT.window;

/// Default of `[transfer] shared_window`: 32 chunks, 8 MiB, what four transfers at the full window hold.
pub const SHARED_WINDOW: u32 = 32;

/// The smallest window a transfer is given however many run: two chunks, so that one is on its way while the
/// other is acknowledged (or `window`, when that is set lower).
pub const MIN_WINDOW: u32 = 2;

/// Mosquitto's default `max_inflight_messages`: more QoS 1 chunks than this in flight only queue in the broker.
pub const BROKER_INFLIGHT: u32 = 20;

/// Default of `[transfer] broker_window`. With the broker next to the gateway, more in flight did not move more
/// bytes, and answers waited behind it: with 100 downloads on a 32 MB/s link to the broker, pings waited 233–325
/// ms (p50) at 64 in flight and rumqttc's queue at 8, against 54–61 ms at 4 and 2 (docs/performance.md, "Answers
/// under load"), and 29 ms since answers no longer wait for a place in the window ("Answers past a full broker
/// window").
pub const BROKER_WINDOW: u16 = 4;

impl GatewayConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<GatewayConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut cfg: GatewayConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        cfg.validate(path)?;
        crate::policy::Policy::for_config(&cfg).map_err(ConfigError::Policy)?;
        Ok(cfg)
    }

    /// Makes relative file paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        self.broker.resolve_paths(base);
        for p in [&mut self.sftp.key, &mut self.sftp.known_hosts]
            .into_iter()
            .chain(self.sftp.passphrase_file.as_mut())
            .chain(self.policy.file.as_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, value: String, reason: &str| ConfigError::Invalid {
            path: path.into(),
            key,
            value,
            reason: reason.into(),
        };
        let root = &self.store.device_root;
        if !root.contains(DEVICE_PLACEHOLDER) {
            return Err(invalid(
                "store.device_root",
                root.clone(),
                "must contain {device}, or all devices would share one root",
            ));
        }
        if root.split('/').any(|n| n == "..") {
            return Err(invalid("store.device_root", root.clone(), "must not contain '..'"));
        }
        for (section, file, env) in [
            ("broker", self.broker.passphrase_file.is_some(), self.broker.passphrase_env.is_some()),
            ("sftp", self.sftp.passphrase_file.is_some(), self.sftp.passphrase_env.is_some()),
        ] {
            if file && env {
                return Err(ConfigError::Invalid {
                    path: path.into(),
                    key: if section == "broker" { "broker.passphrase_env" } else { "sftp.passphrase_env" },
                    value: "(set)".into(),
                    reason: "give passphrase_file or passphrase_env, not both".into(),
                });
            }
        }
        let sftp = &self.sftp;
        if sftp.keepalive.is_zero() {
            return Err(invalid("sftp.keepalive", "0s".into(), "must be above 0"));
        }
        if sftp.keepalive_max == 0 {
            return Err(invalid("sftp.keepalive_max", "0".into(), "must be at least 1"));
        }
        if sftp.request_timeout < Duration::from_secs(1) {
            return Err(invalid("sftp.request_timeout", format!("{:?}", sftp.request_timeout), "must be at least 1s"));
        }
        if self.runtime.threads > MAX_RUNTIME_THREADS {
            return Err(invalid(
                "runtime.threads",
                self.runtime.threads.to_string(),
                &format!("must be at most {MAX_RUNTIME_THREADS} (0 = one per CPU core)"),
            ));
        }
        let t = &self.transfer;
        if !(1024..=mqsftp_proto::chunk::MAX_CHUNK_DATA as u32).contains(&t.chunk_size) {
            return Err(invalid(
                "transfer.chunk_size",
                t.chunk_size.to_string(),
                &format!("must be between 1024 and {}", mqsftp_proto::chunk::MAX_CHUNK_DATA),
            ));
        }
        if !(1..=BROKER_INFLIGHT).contains(&t.window) {
            return Err(invalid(
                "transfer.window",
                t.window.to_string(),
                &format!("must be between 1 and {BROKER_INFLIGHT} (the broker's in-flight limit)"),
            ));
        }
        if t.shared_window == 0 {
            return Err(invalid("transfer.shared_window", "0".into(), "must be at least 1"));
        }
        if t.broker_window == 0 {
            return Err(invalid("transfer.broker_window", "0".into(), "must be at least 1"));
        }
        if t.max_transfers == 0 || t.max_transfers_per_device == 0 {
            return Err(invalid("transfer.max_transfers", "0".into(), "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GOOD: &str = r#"
[broker]
host = "localhost"
port = 8883
ca = "ca.crt"
cert = "gateway.crt"
key = "gateway.key"

[sftp]
host = "localhost"
port = 2222
user = "mqsftp"
key = "gateway_ed25519"
known_hosts = "/etc/mqsftp/known_hosts"

[store]
device_root = "devices/{device}"
"#;

    fn load(text: &str) -> Result<GatewayConfig, ConfigError> {
        let dir = std::env::temp_dir().join(format!("mqsftp-gw-cfg-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let r = GatewayConfig::load(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        r
    }

    #[test]
    fn sftp_liveness_keys_have_defaults_and_limits() {
        let cfg = load(GOOD).unwrap();
        assert_eq!(cfg.sftp.keepalive, Duration::from_secs(15));
        assert_eq!((cfg.sftp.keepalive_max, cfg.sftp.request_timeout), (3, Duration::from_secs(30)));
        let with = |keys: &str| GOOD.replace("[store]", &format!("{keys}\n[store]"));
        let cfg = load(&with("keepalive = \"1s\"\nkeepalive_max = 2\nrequest_timeout = \"5s\"")).unwrap();
        assert_eq!((cfg.sftp.keepalive, cfg.sftp.keepalive_max), (Duration::from_secs(1), 2));
        for (bad, key) in [
            ("keepalive = \"0s\"", "sftp.keepalive"),
            ("keepalive_max = 0", "sftp.keepalive_max"),
            ("request_timeout = \"500ms\"", "sftp.request_timeout"),
        ] {
            let e = load(&with(bad)).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn loads_and_resolves_paths() {
        let cfg = load(GOOD).unwrap();
        assert!(cfg.broker.ca.is_absolute());
        assert!(cfg.sftp.key.ends_with("gateway_ed25519") && cfg.sftp.key.is_absolute());
        assert_eq!(cfg.sftp.known_hosts, PathBuf::from("/etc/mqsftp/known_hosts"));
        assert_eq!((cfg.transfer.chunk_size, cfg.transfer.window), (261120, 8), "the defaults");
        assert_eq!(cfg.transfer.shared_window, 32);
        assert_eq!(cfg.transfer.broker_window, 4);
        let d = DeviceId::new("d1").unwrap();
        assert_eq!(cfg.store.path_of(&d, &mqsftp_proto::confine("a/b").unwrap()), "devices/d1/a/b");
        assert_eq!(cfg.store.path_of(&d, &mqsftp_proto::confine("").unwrap()), "devices/d1");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = load(&GOOD.replace("devices/{device}", "shared")).unwrap_err().to_string();
        assert!(e.contains("store.device_root") && e.contains("{device}"), "{e}");
        let e = load(&format!("{GOOD}\n[transfer]\nwindow = 50\n")).unwrap_err().to_string();
        assert!(e.contains("transfer.window = 50"), "{e}");
        let e = load(&format!("{GOOD}\n[transfer]\nshared_window = 0\n")).unwrap_err().to_string();
        assert!(e.contains("transfer.shared_window = 0") && e.contains("at least 1"), "{e}");
        let e = load(&format!("{GOOD}\n[transfer]\nbroker_window = 0\n")).unwrap_err().to_string();
        assert!(e.contains("transfer.broker_window = 0") && e.contains("at least 1"), "{e}");
        let e = load(&format!("{GOOD}\n[transfer]\nbroker_window = 70000\n")).unwrap_err().to_string();
        assert!(e.contains("broker_window"), "{e}");
        let cfg = load(&format!("{GOOD}\n[transfer]\nbroker_window = 64\n")).unwrap();
        assert_eq!(cfg.transfer.broker_window, 64);
        let e = load(&GOOD.replace("port = 2222", "port = \"x\"")).unwrap_err().to_string();
        assert!(e.contains("port"), "{e}");
        let e = load(&GOOD.replace("[store]", "[store]\nbogus = 1")).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn runtime_threads_default_to_one_and_are_bounded() {
        assert_eq!(load(GOOD).unwrap().runtime.threads, 1);
        assert_eq!(load(&format!("{GOOD}\n[runtime]\nthreads = 0\n")).unwrap().runtime.threads, 0);
        let e = load(&format!("{GOOD}\n[runtime]\nthreads = 5000\n")).unwrap_err().to_string();
        assert!(e.contains("runtime.threads = 5000") && e.contains("at most 1024"), "{e}");
        let e = load(&format!("{GOOD}\n[runtime]\nworkers = 2\n")).unwrap_err().to_string();
        assert!(e.contains("workers"), "{e}");
    }
}
