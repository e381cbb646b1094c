//! The benchmark's environment: a testkit stack (real Mosquitto + sshd, per-run PKI), the gateway config the
//! benchmark runs with, the device it measures with, and test files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use mqsftp_proto::HashAlg;
use mqsftp_testkit::Stack;
use rand::RngCore;

use crate::procs::GatewayProc;

/// The device of the single-device measurements.
pub const DEVICE: &str = "bench";

/// What the benchmark changes in the stack's `gateway.toml` `[transfer]` section.
pub struct Tuning {
    /// Concurrent transfers, in all and per device (the defaults, 256 and 4, would answer `busy` to most of 1,000
    /// simultaneous devices, and to most of the loaded run's downloads).
    pub max_transfers: usize,
    /// Chunk size and window, when not the defaults (to choose them by measurement).
    pub chunk_size: Option<u32>,
    pub window: Option<u32>,
    /// `[transfer] shared_window`, when not the default.
    pub shared_window: Option<u32>,
    /// `[transfer] broker_window`, when not the default.
    pub broker_window: Option<u16>,
    /// `[runtime] threads`, when not the default.
    pub gateway_threads: Option<usize>,
}

/// Everything the scenarios share.
pub struct Env {
    pub stack: Stack,
    /// The release `mqsftp` binary (gateway and device CLI).
    pub mqsftp: PathBuf,
    /// Scratch space for local files (device side).
    pub work: PathBuf,
    /// `bench-gateway.toml`: the stack's gateway config with `max_transfers` raised for the many-devices run.
    pub gateway_toml: PathBuf,
    /// `device.toml` of [`DEVICE`].
    pub device_toml: PathBuf,
    /// [`DEVICE`]'s root on the store (a local directory).
    pub device_root: PathBuf,
    /// The gateway's chunk size and window, as configured.
    pub chunk_size: u32,
    pub window: u32,
    /// The gateway's `[transfer] shared_window`, as configured.
    pub shared_window: u32,
    /// The gateway's `[transfer] broker_window`, as configured.
    pub broker_window: u16,
    /// The gateway process's runtime threads (`[runtime] threads`: 0 = one per core).
    pub gateway_threads: usize,
    /// Where the gateway logs go (kept after the run).
    pub logs: PathBuf,
    /// Commands to run the gateway / device CLI under (`--wrap-gateway`, `--wrap-device`), e.g. a profiler.
    pub wrap_gateway: Vec<String>,
    pub wrap_device: Vec<String>,
    /// The hash the device CLI verifies with (`--hash`).
    pub hash: HashAlg,
    /// Counts gateway starts, for log names.
    gateways: u32,
}

impl Env {
    /// Starts the stack and prepares the gateway config (with `tuning`) and the bench device.
    pub fn start(mqsftp: PathBuf, tuning: Tuning, logs: PathBuf) -> anyhow::Result<Env> {
        std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
        let stack =
            Stack::start().context("start Mosquitto and sshd (run scripts/install-deps if they are missing)")?;
        let work = stack.dir().join("bench");
        std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
        let gateway_toml = stack.pki_dir().join("bench-gateway.toml");
        let text = std::fs::read_to_string(stack.gateway_config())
            .with_context(|| format!("read {}", stack.gateway_config().display()))?;
        let mut table: toml::Table =
            text.parse().with_context(|| format!("parse {}", stack.gateway_config().display()))?;
        let transfer = transfer_section(&mut table)?;
        transfer.insert("max_transfers".into(), toml::Value::Integer(tuning.max_transfers as i64));
        // The loaded run's downloads are one device's.
        transfer.insert("max_transfers_per_device".into(), toml::Value::Integer(tuning.max_transfers as i64));
        if let Some(c) = tuning.chunk_size {
            transfer.insert("chunk_size".into(), toml::Value::Integer(i64::from(c)));
        }
        if let Some(w) = tuning.window {
            transfer.insert("window".into(), toml::Value::Integer(i64::from(w)));
        }
        if let Some(w) = tuning.shared_window {
            transfer.insert("shared_window".into(), toml::Value::Integer(i64::from(w)));
        }
        if let Some(w) = tuning.broker_window {
            transfer.insert("broker_window".into(), toml::Value::Integer(i64::from(w)));
        }
        if let Some(n) = tuning.gateway_threads {
            let mut runtime = toml::Table::new();
            runtime.insert("threads".into(), toml::Value::Integer(i64::try_from(n)?));
            table.insert("runtime".into(), toml::Value::Table(runtime));
        }
        std::fs::write(&gateway_toml, toml::to_string(&table)?)
            .with_context(|| format!("write {}", gateway_toml.display()))?;
        let cfg = mqsftp_gateway::GatewayConfig::load(&gateway_toml)?;
        let device_toml = stack.device(DEVICE)?;
        let device_root = stack.device_root(DEVICE);
        std::fs::create_dir_all(&device_root).with_context(|| format!("create {}", device_root.display()))?;
        Ok(Env {
            stack,
            mqsftp,
            work,
            gateway_toml,
            device_toml,
            device_root,
            chunk_size: cfg.transfer.chunk_size,
            window: cfg.transfer.window,
            shared_window: cfg.transfer.shared_window,
            broker_window: cfg.transfer.broker_window,
            gateway_threads: cfg.runtime.threads,
            logs,
            wrap_gateway: Vec::new(),
            wrap_device: Vec::new(),
            hash: HashAlg::Blake3,
            gateways: 0,
        })
    }

    /// Starts a fresh gateway process (so that its peak RSS belongs to one scenario).
    pub fn gateway(&mut self, scenario: &str) -> anyhow::Result<GatewayProc> {
        let config = self.gateway_toml.clone();
        self.start_gateway(scenario, &config)
    }

    fn start_gateway(&mut self, scenario: &str, config: &Path) -> anyhow::Result<GatewayProc> {
        self.gateways += 1;
        let log = self.logs.join(format!("gateway-{}-{scenario}.log", self.gateways));
        GatewayProc::start(&self.mqsftp, config, log, &self.wrap_gateway)
    }

    /// Starts a fresh gateway process that reaches the broker on `port` of the same host (a relay in front of it),
    /// with these `[transfer]` settings changed.
    pub fn gateway_via(&mut self, scenario: &str, port: u16, transfer: &[(&str, i64)]) -> anyhow::Result<GatewayProc> {
        let text = std::fs::read_to_string(&self.gateway_toml)
            .with_context(|| format!("read {}", self.gateway_toml.display()))?;
        let mut table: toml::Table = text.parse().with_context(|| format!("parse {}", self.gateway_toml.display()))?;
        let broker = table
            .get_mut("broker")
            .and_then(|b| b.as_table_mut())
            .context("[broker] of the gateway config is not a table")?;
        broker.insert("port".into(), toml::Value::Integer(i64::from(port)));
        let section = transfer_section(&mut table)?;
        for (key, value) in transfer {
            section.insert((*key).into(), toml::Value::Integer(*value));
        }
        let path = self.gateway_toml.with_file_name(format!("bench-gateway-{scenario}.toml"));
        std::fs::write(&path, toml::to_string(&table)?).with_context(|| format!("write {}", path.display()))?;
        self.start_gateway(scenario, &path)
    }

    /// `mqsftp get` of [`DEVICE`]: `remote` into `local`.
    pub fn get_cmd(&self, remote: &str, local: &Path) -> Command {
        let mut c = crate::procs::wrapped(&self.wrap_device, &self.mqsftp);
        c.args(["get", "--quiet", "--hash", self.hash.as_str(), "--config"]).arg(&self.device_toml);
        c.arg(remote).arg(local);
        c
    }

    /// `mqsftp put --overwrite` of [`DEVICE`]: `local` to `remote`.
    pub fn put_cmd(&self, local: &Path, remote: &str) -> Command {
        let mut c = crate::procs::wrapped(&self.wrap_device, &self.mqsftp);
        c.args(["put", "--quiet", "--overwrite", "--hash", self.hash.as_str(), "--config"]).arg(&self.device_toml);
        c.arg(local).arg(remote);
        c
    }

    /// OpenSSH `sftp` in batch mode as the gateway logs in (its key, the pinned host key, the same user), with
    /// `cipher`, running the commands of `batch`.
    pub fn sftp_cmd(&self, cipher: &str, batch: &Path) -> Command {
        let mut c = Command::new("sftp");
        c.arg("-q")
            .args(["-F", "/dev/null"])
            .arg("-b")
            .arg(batch)
            .arg("-i")
            .arg(self.stack.gateway_ssh_key())
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.stack.known_hosts().display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args(["-o", &format!("Ciphers={cipher}")])
            .args(["-P", &self.stack.sftp_port().to_string()])
            .arg(format!("{}@{}", self.stack.sftp_user(), mqsftp_testkit::HOST));
        c
    }

    /// The store path (relative to the SFTP login directory) of `name` in [`DEVICE`]'s root.
    pub fn store_path(&self, name: &str) -> String {
        format!("devices/{DEVICE}/{name}")
    }
}

/// The `[transfer]` section of a gateway config, made if missing.
fn transfer_section(table: &mut toml::Table) -> anyhow::Result<&mut toml::Table> {
    table
        .entry("transfer")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .context("[transfer] of the gateway config is not a table")
}

/// Writes `size` random bytes to `path` (random, so that nothing on the way can compress or deduplicate them).
pub fn random_file(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?);
    let mut buf = vec![0u8; 1 << 20];
    let mut rng = rand::thread_rng();
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n]).with_context(|| format!("write {}", path.display()))?;
        left -= n as u64;
    }
    f.flush().with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// Removes a file if it exists.
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}
