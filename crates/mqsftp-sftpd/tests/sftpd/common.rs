//! A server per test, and helpers to run OpenSSH's clients against it.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use mqsftp_sftpd::{OpenFiles, Sftpd, SftpdConfig};
use tempfile::TempDir;

/// The SFTP user of the fixtures.
pub const USER: &str = "mqsftp";
/// Upper bound for one client run.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// A running server over `root`, with the gateway's key from `mqsftp pki init` authorized.
pub struct Fixture {
    pub dir: TempDir,
    /// The served directory.
    pub root: PathBuf,
    /// The authorized client key (`pki/gateway_ed25519`).
    pub key: PathBuf,
    /// `[127.0.0.1]:PORT ssh-ed25519 …` for this server.
    pub known_hosts: PathBuf,
    pub server: Option<Sftpd>,
    batches: std::cell::Cell<usize>,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// `mqsftp pki init` into `dir/pki` and a host key in `dir/host_ed25519`.
pub fn make_keys(dir: &Path) -> (PathBuf, PathBuf) {
    let pki = dir.join("pki");
    mqsftp_pki::init(&mqsftp_pki::InitOptions {
        dir: pki.clone(),
        sftp_user: USER.into(),
        sftp_host: "127.0.0.1".into(),
        ..Default::default()
    })
    .unwrap();
    let host_key = dir.join("host_ed25519");
    mqsftp_pki::generate_ssh_key(&host_key, "sftpd-test").unwrap();
    (pki, host_key)
}

impl Fixture {
    pub async fn start() -> Fixture {
        Fixture::start_with(OpenFiles::Shared).await
    }

    /// A server that treats open files as `open_files` says.
    pub async fn start_with(open_files: OpenFiles) -> Fixture {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        std::fs::create_dir(&root).unwrap();
        let (pki, host_key) = make_keys(dir.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = SftpdConfig {
            root: root.clone(),
            host_key,
            authorized_keys: pki.join("authorized_keys"),
            user: USER.into(),
            open_files,
        };
        let server = Sftpd::start(listener, config).await.unwrap();
        let line =
            mqsftp_pki::known_hosts_line("127.0.0.1", server.local_addr().port(), &server.host_public_key_openssh())
                .unwrap();
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, format!("{line}\n")).unwrap();
        Fixture {
            key: pki.join("gateway_ed25519"),
            root,
            known_hosts,
            server: Some(server),
            dir,
            batches: std::cell::Cell::new(0),
        }
    }

    pub fn port(&self) -> u16 {
        self.server.as_ref().unwrap().local_addr().port()
    }

    /// Options for OpenSSH clients: no user or system config, no agent, the pinned host key only.
    pub fn openssh_options(&self, key: Option<&Path>) -> Vec<String> {
        let mut args: Vec<String> = ["-F", "/dev/null"].iter().map(|s| s.to_string()).collect();
        for opt in [
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "GlobalKnownHostsFile=/dev/null".into(),
            "StrictHostKeyChecking=yes".into(),
            "BatchMode=yes".into(),
            "IdentitiesOnly=yes".into(),
            "IdentityAgent=none".into(),
            "ConnectTimeout=10".into(),
        ] {
            args.push("-o".into());
            args.push(opt);
        }
        match key {
            Some(key) => {
                args.push("-i".into());
                args.push(key.display().to_string());
            }
            None => {
                args.push("-o".into());
                args.push("PubkeyAuthentication=no".into());
            }
        }
        args
    }

    /// `sftp -b BATCH` as `user` with `key`, plus `extra` options.
    pub async fn sftp_as(&self, user: &str, key: Option<&Path>, batch: &str, extra: &[&str]) -> Output {
        let n = self.batches.get() + 1;
        self.batches.set(n);
        let file = self.dir.path().join(format!("batch-{n}"));
        std::fs::write(&file, batch).unwrap();
        let mut cmd = tokio::process::Command::new("sftp");
        cmd.arg("-b").arg(&file).args(self.openssh_options(key)).args(extra);
        cmd.arg("-P").arg(self.port().to_string()).arg(format!("{user}@127.0.0.1"));
        run(cmd).await
    }

    /// `sftp -b BATCH` with the authorized key.
    pub async fn sftp(&self, batch: &str, extra: &[&str]) -> Output {
        self.sftp_as(USER, Some(&self.key), batch, extra).await
    }

    /// `ssh` with the authorized key, plus `args` (options and/or a command).
    pub async fn ssh(&self, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.args(self.openssh_options(Some(&self.key))).arg("-p").arg(self.port().to_string());
        cmd.args(args);
        run(cmd).await
    }
}

async fn run(mut cmd: tokio::process::Command) -> Output {
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(CLIENT_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("cannot run {cmd:?} (OpenSSH client; scripts/install-deps installs it): {e}"),
        Err(_) => panic!("{cmd:?} did not finish within {CLIENT_TIMEOUT:?}"),
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Deterministic pseudo-random bytes (xorshift), so that a wrong offset shows.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Asserts a client run succeeded, showing its output otherwise.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}
