//! The SFTP store: one SSH connection with a pinned host key and public-key auth, kept open and shared by all
//! transfers, and reopened when it breaks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mqsftp_proto::ErrorCode;
use russh::client::{self, AuthResult};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh_sftp::client::{RawSftpSession, SftpSession};
use russh_sftp::protocol::{Packet, StatusCode};
use tokio::sync::Mutex;

use crate::config::SftpConfig;

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The private key could not be loaded.
    #[error("cannot load the SSH key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    /// The server's host key is not in known_hosts.
    #[error("host key of {host} ({fingerprint}) is not in {known_hosts}; refusing to connect")]
    UnknownHostKey { host: String, fingerprint: String, known_hosts: PathBuf },
    /// The server's host key differs from the one in known_hosts.
    #[error("host key of {host} changed: server offers {fingerprint}, {known_hosts} line {line} lists another key; refusing to connect (possible man-in-the-middle)")]
    ChangedHostKey { host: String, fingerprint: String, known_hosts: PathBuf, line: usize },
    /// known_hosts could not be read.
    #[error("cannot read known_hosts {path}: {reason}")]
    KnownHosts { path: PathBuf, reason: String },
    /// The server refused our key.
    #[error("the SFTP server {host} refused public-key authentication for user {user}")]
    AuthRefused { host: String, user: String },
    /// TCP/SSH failure.
    #[error("SSH connection to {host} failed: {reason}")]
    Ssh { host: String, reason: String },
    /// Connect + auth took too long.
    #[error("SSH connection to {host} timed out after {after:?}")]
    Timeout { host: String, after: Duration },
    /// An SFTP operation failed.
    #[error("{op} {path}: {source}")]
    Sftp { op: &'static str, path: String, source: russh_sftp::client::error::Error },
}

impl StoreError {
    /// The wire code to report to a device.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::Sftp { source: russh_sftp::client::error::Error::Status(s), .. } => match s.status_code {
                StatusCode::NoSuchFile => ErrorCode::NotFound,
                StatusCode::PermissionDenied => ErrorCode::PermissionDenied,
                _ => ErrorCode::Internal,
            },
            // Not a status from the server: the session broke (or timed out) under the operation.
            StoreError::Sftp { .. } => ErrorCode::Unavailable,
            _ => ErrorCode::Unavailable,
        }
    }

    /// Whether the SSH connection should be dropped and reopened.
    fn is_connection_failure(&self) -> bool {
        match self {
            StoreError::Sftp { source, .. } => !matches!(source, russh_sftp::client::error::Error::Status(_)),
            _ => true,
        }
    }

    /// A message for the device: names the device-relative path, never the server layout.
    pub fn device_message(&self, rel: &str) -> String {
        match self.code() {
            ErrorCode::NotFound => format!("no such file: {rel}"),
            ErrorCode::PermissionDenied => format!("permission denied: {rel}"),
            ErrorCode::Unavailable => "the file store is unavailable".to_string(),
            _ => format!("store error on {rel}"),
        }
    }
}

/// Checks host keys against a known_hosts file; never accepts an unknown key.
pub struct PinnedHostKey {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    verdict: Arc<std::sync::Mutex<Option<StoreError>>>,
}

impl client::Handler for PinnedHostKey {
    type Error = russh::Error;

    async fn check_server_key(&mut self, offered: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        // Host certificates are not trusted on their own: the plain key must be pinned in known_hosts.
        let key = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(cert) => PublicKey::from(cert.public_key().clone()),
        };
        let key = &key;
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let verdict = match check_known_host(&self.host, self.port, key, &self.known_hosts) {
            Ok(true) => return Ok(true),
            Ok(false) => StoreError::UnknownHostKey {
                host: host_port(&self.host, self.port),
                fingerprint,
                known_hosts: self.known_hosts.clone(),
            },
            Err(KnownHostsError::Changed(line)) => StoreError::ChangedHostKey {
                host: host_port(&self.host, self.port),
                fingerprint,
                known_hosts: self.known_hosts.clone(),
                line,
            },
            Err(KnownHostsError::Read(reason)) => StoreError::KnownHosts { path: self.known_hosts.clone(), reason },
        };
        if let Ok(mut v) = self.verdict.lock() {
            *v = Some(verdict);
        }
        Ok(false)
    }
}

fn host_port(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

enum KnownHostsError {
    Changed(usize),
    Read(String),
}

/// Whether `key` is listed for host:port in `path`. A listed key of the same algorithm that differs is a change.
fn check_known_host(host: &str, port: u16, key: &PublicKey, path: &Path) -> Result<bool, KnownHostsError> {
    if let Err(e) = std::fs::metadata(path) {
        return Err(KnownHostsError::Read(e.to_string()));
    }
    match russh::keys::check_known_hosts_path(host, port, key, path) {
        Ok(found) => Ok(found),
        Err(russh::keys::Error::KeyChanged { line }) => Err(KnownHostsError::Changed(line)),
        Err(e) => Err(KnownHostsError::Read(e.to_string())),
    }
}

/// An authenticated SFTP session and the SSH connection under it.
///
/// russh-sftp's high-level session neither tells which OpenSSH extensions the server offers nor sends
/// `posix-rename@openssh.com`, so a second SFTP channel on the same connection, driven by the raw session, learns
/// the extensions at its handshake and carries the atomic replacing rename.
pub struct StoreSession {
    /// The SFTP client.
    pub sftp: SftpSession,
    ext: RawSftpSession,
    /// The server offers `fsync@openssh.com`, so `File::sync_all` really syncs.
    pub fsync: bool,
    /// The server offers `posix-rename@openssh.com` (rename that replaces the target atomically).
    pub posix_rename: bool,
    _ssh: client::Handle<PinnedHostKey>,
}

impl StoreSession {
    /// Creates `dir` and its missing parents; returns the directories created. A directory that appears meanwhile
    /// (another request creating it) is not an error.
    pub async fn create_dir_all(&self, dir: &str) -> Result<Vec<String>, (String, russh_sftp::client::error::Error)> {
        let mut created = Vec::new();
        if dir == "." || self.try_exists(dir).await.unwrap_or(false) {
            return Ok(created);
        }
        let mut prefix = String::new();
        for name in dir.split('/') {
            if !prefix.is_empty() || dir.starts_with('/') {
                prefix.push('/');
            }
            prefix.push_str(name);
            if name.is_empty() || self.try_exists(prefix.as_str()).await.unwrap_or(false) {
                continue;
            }
            match self.create_dir(prefix.as_str()).await {
                Ok(()) => created.push(prefix.clone()),
                Err(_) if self.try_exists(prefix.as_str()).await.unwrap_or(false) => {}
                Err(e) => return Err((prefix, e)),
            }
        }
        Ok(created)
    }

    /// Renames `from` to `to`, atomically replacing `to` if it exists. Fails with `OpUnsupported` when the server
    /// lacks `posix-rename@openssh.com`.
    pub async fn rename_replacing(&self, from: &str, to: &str) -> Result<(), russh_sftp::client::error::Error> {
        if !self.posix_rename {
            return Err(russh_sftp::client::error::Error::Status(russh_sftp::protocol::Status {
                id: 0,
                status_code: StatusCode::OpUnsupported,
                error_message: "the SFTP server does not offer posix-rename@openssh.com".into(),
                language_tag: "en".into(),
            }));
        }
        let mut data = Vec::with_capacity(8 + from.len() + to.len());
        for s in [from, to] {
            data.extend_from_slice(&(s.len() as u32).to_be_bytes());
            data.extend_from_slice(s.as_bytes());
        }
        match self.ext.extended(POSIX_RENAME, data).await? {
            Packet::Status(st) if st.status_code == StatusCode::Ok => Ok(()),
            Packet::Status(st) => Err(st.into()),
            _ => Err(russh_sftp::client::error::Error::UnexpectedPacket),
        }
    }
}

const POSIX_RENAME: &str = "posix-rename@openssh.com";

impl std::ops::Deref for StoreSession {
    type Target = SftpSession;
    fn deref(&self) -> &SftpSession {
        &self.sftp
    }
}

/// Opens an authenticated SFTP session according to `cfg`.
pub async fn connect(cfg: &SftpConfig) -> Result<StoreSession, StoreError> {
    let host = host_port(&cfg.host, cfg.port);
    let fut = connect_inner(cfg, host.clone());
    match tokio::time::timeout(cfg.connect_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Timeout { host, after: cfg.connect_timeout }),
    }
}

async fn connect_inner(cfg: &SftpConfig, host: String) -> Result<StoreSession, StoreError> {
    let key = russh::keys::load_secret_key(&cfg.key, None)
        .map_err(|e| StoreError::Key { path: cfg.key.clone(), reason: e.to_string() })?;
    let config = client::Config {
        nodelay: true,
        window_size: 16 * 1024 * 1024,
        keepalive_interval: Some(cfg.keepalive),
        keepalive_max: cfg.keepalive_max,
        ..Default::default()
    };
    let verdict = Arc::new(std::sync::Mutex::new(None));
    let handler = PinnedHostKey {
        host: cfg.host.clone(),
        port: cfg.port,
        known_hosts: cfg.known_hosts.clone(),
        verdict: verdict.clone(),
    };
    let ssh_err = |e: russh::Error| {
        if let Some(v) = verdict.lock().ok().and_then(|mut v| v.take()) {
            return v;
        }
        StoreError::Ssh { host: host.clone(), reason: e.to_string() }
    };
    let mut session =
        client::connect(Arc::new(config), (cfg.host.as_str(), cfg.port), handler).await.map_err(ssh_err)?;
    let hash = session.best_supported_rsa_hash().await.map_err(ssh_err)?.flatten();
    let auth = session
        .authenticate_publickey(&cfg.user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
        .await
        .map_err(ssh_err)?;
    if !matches!(auth, AuthResult::Success) {
        return Err(StoreError::AuthRefused { host, user: cfg.user.clone() });
    }
    let channel = session.channel_open_session().await.map_err(ssh_err)?;
    channel.request_subsystem(true, "sftp").await.map_err(ssh_err)?;
    let start_err = |e| StoreError::Sftp { op: "start sftp on", path: host.clone(), source: e };
    let request_timeout = cfg.request_timeout.as_secs().max(1);
    let sftp_cfg = russh_sftp::client::Config {
        // russh-sftp reads ahead this many requests of up to 255 KiB (OpenSSH's read limit) per open file. Its
        // default, 16 (4 MiB per download), made the gateway's memory grow with the number of downloads far beyond
        // their windows; 4 (1 MiB, two default windows) keeps loopback and LAN reads at full speed.
        max_concurrent_reads: SFTP_READS_IN_FLIGHT,
        request_timeout_secs: request_timeout,
        ..Default::default()
    };
    let sftp = SftpSession::new_with_config(channel.into_stream(), sftp_cfg).await.map_err(start_err)?;
    let channel = session.channel_open_session().await.map_err(ssh_err)?;
    channel.request_subsystem(true, "sftp").await.map_err(ssh_err)?;
    let ext = RawSftpSession::new(channel.into_stream());
    ext.set_timeout(request_timeout);
    let version = ext.init().await.map_err(start_err)?;
    let offers = |name: &str| version.extensions.contains_key(name);
    let (fsync, posix_rename) = (offers("fsync@openssh.com"), offers(POSIX_RENAME));
    Ok(StoreSession { sftp, ext, fsync, posix_rename, _ssh: session })
}

/// SFTP read requests in flight per open file (each up to 255 KiB with OpenSSH).
pub const SFTP_READS_IN_FLIGHT: usize = 4;

/// A shared, lazily (re)connected SFTP session.
pub struct Store {
    cfg: SftpConfig,
    session: Mutex<Option<Arc<StoreSession>>>,
}

impl Store {
    /// A store that connects on first use.
    pub fn new(cfg: SftpConfig) -> Self {
        Self { cfg, session: Mutex::new(None) }
    }

    /// The open session, connecting if needed.
    pub async fn session(&self) -> Result<Arc<StoreSession>, StoreError> {
        let mut guard = self.session.lock().await;
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let s = Arc::new(connect(&self.cfg).await?);
        *guard = Some(s.clone());
        Ok(s)
    }

    /// Drops `broken` (a session found dead) so that the next use reconnects; a newer session is kept.
    pub async fn forget(&self, broken: &Arc<StoreSession>) {
        let mut guard = self.session.lock().await;
        if guard.as_ref().is_some_and(|s| Arc::ptr_eq(s, broken)) {
            *guard = None;
        }
    }

    /// Reports an error seen on the session; connection failures make the next use reconnect.
    pub async fn note_error(&self, err: &StoreError) {
        if err.is_connection_failure() {
            *self.session.lock().await = None;
        }
    }
}
