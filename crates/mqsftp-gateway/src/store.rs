//! The SFTP store: one SSH connection with a pinned host key and public-key auth, kept open and shared by all
//! transfers, and reopened when it breaks.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mqsftp_proto::ErrorCode;
use russh::client::{self, AuthResult};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::Preferred;
use russh_sftp::client::{RawSftpSession, SftpSession};
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};
use tokio::sync::Mutex;

use crate::config::SftpConfig;
use crate::known_hosts::{KnownHosts, Verdict};

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The private key could not be loaded.
    #[error("cannot load the SSH key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    /// The server's host key is not in known_hosts.
    #[error("host key of {host} ({fingerprint}) is not in {known_hosts}; refusing to connect")]
    UnknownHostKey { host: String, fingerprint: String, known_hosts: PathBuf },
    /// The server's host key is listed as `@revoked` in known_hosts.
    #[error("host key of {host} ({fingerprint}) is revoked in {known_hosts} line {line}; refusing to connect")]
    RevokedHostKey { host: String, fingerprint: String, known_hosts: PathBuf, line: usize },
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
        let host = host_port(&self.host, self.port);
        let known_hosts = self.known_hosts.clone();
        let verdict = match check_known_host(&self.host, self.port, key, &self.known_hosts) {
            Ok(Verdict::Trusted { .. }) => return Ok(true),
            Ok(Verdict::Unknown) => StoreError::UnknownHostKey { host, fingerprint, known_hosts },
            Ok(Verdict::Changed { line }) => StoreError::ChangedHostKey { host, fingerprint, known_hosts, line },
            Ok(Verdict::Revoked { line }) => StoreError::RevokedHostKey { host, fingerprint, known_hosts, line },
            Err(reason) => StoreError::KnownHosts { path: self.known_hosts.clone(), reason },
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

/// Reads `path` and checks `key` for host:port (rules in [`crate::known_hosts`]). Lines the parser skips are
/// logged as warnings naming the file and line; a malformed file is an error naming them.
fn check_known_host(host: &str, port: u16, key: &PublicKey, path: &Path) -> Result<Verdict, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let (known, warnings) = KnownHosts::parse(&text).map_err(|e| e.to_string())?;
    for w in warnings {
        tracing::warn!(known_hosts = %path.display(), line = w.line, "{}", w.message);
    }
    Ok(known.check(host, port, key))
}

/// The algorithms the gateway offers the SFTP server: modern ones only. Key exchange: ML-KEM-768 + X25519
/// (post-quantum hybrid) or Curve25519, with strict key exchange (the Terrapin fix); no SHA-1 or finite-field
/// groups. Host keys: Ed25519, ECDSA, RSA with SHA-2 only (no `ssh-rsa` SHA-1 signatures, no DSA). Ciphers: AEAD
/// (ChaCha20-Poly1305, AES-GCM) first, then AES-CTR with SHA-2 encrypt-then-MAC; no CBC, no 3DES, no SHA-1 MACs.
/// No compression. The client never requests agent forwarding, port forwarding, X11 or a PTY: it opens two
/// session channels with the `sftp` subsystem and nothing else.
pub fn preferred_algorithms() -> Preferred {
    use russh::keys::{Algorithm, EcdsaCurve};
    use russh::{kex, mac};
    Preferred {
        kex: Cow::Owned(vec![
            kex::MLKEM768X25519_SHA256,
            kex::CURVE25519,
            kex::CURVE25519_PRE_RFC_8731,
            kex::EXTENSION_SUPPORT_AS_CLIENT,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
        ]),
        key: Cow::Owned(vec![
            Algorithm::Ed25519,
            Algorithm::Ecdsa { curve: EcdsaCurve::NistP256 },
            Algorithm::Ecdsa { curve: EcdsaCurve::NistP384 },
            Algorithm::Ecdsa { curve: EcdsaCurve::NistP521 },
            Algorithm::Rsa { hash: Some(HashAlg::Sha512) },
            Algorithm::Rsa { hash: Some(HashAlg::Sha256) },
        ]),
        host_key_certificates: Cow::Borrowed(&[]),
        // AES-GCM first where the CPU has AES instructions (measured faster than ChaCha20; docs/performance.md).
        cipher: Cow::Borrowed(preferred_ciphers()),
        mac: Cow::Owned(vec![mac::HMAC_SHA512_ETM, mac::HMAC_SHA256_ETM, mac::HMAC_SHA512, mac::HMAC_SHA256]),
        compression: Cow::Owned(vec![russh::compression::NONE]),
    }
}

/// Loads the gateway's SSH key, decrypting it with the configured passphrase when it is encrypted.
fn load_key(cfg: &SftpConfig) -> Result<russh::keys::PrivateKey, StoreError> {
    let err = |reason: String| StoreError::Key { path: cfg.key.clone(), reason };
    let pass = mqsftp_mqtt::passphrase::read("sftp", cfg.passphrase_file.as_deref(), cfg.passphrase_env.as_deref())
        .map_err(|e| err(e.to_string()))?;
    match russh::keys::load_secret_key(&cfg.key, pass.as_ref().map(|p| p.as_str())) {
        Ok(key) => Ok(key),
        Err(russh::keys::Error::KeyIsEncrypted) => {
            Err(err("it is encrypted; set passphrase_file or passphrase_env in [sftp]".into()))
        }
        // Never the key's contents: russh's errors name the failure, not the data.
        Err(e) if pass.is_some() => Err(err(format!("wrong passphrase, or not a usable key ({e})"))),
        Err(e) => Err(err(e.to_string())),
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
    ext: Arc<RawSftpSession>,
    /// The server offers `fsync@openssh.com`, so `File::sync_all` really syncs.
    pub fsync: bool,
    /// The server offers `posix-rename@openssh.com` (rename that replaces the target atomically).
    pub posix_rename: bool,
    /// Most bytes one SFTP read returns: the server's `limits@openssh.com` `max-read-length` (OpenSSH: 255 KiB),
    /// else [`DEFAULT_MAX_READ`]. Downloads split larger chunks into reads of at most this.
    pub max_read: u32,
    /// The login directory (the real path of `.`, asked at connect), against which relative store paths resolve.
    home: String,
    /// Permits for open handles on this session, see [`MAX_OPEN_HANDLES`].
    handles: Arc<tokio::sync::Semaphore>,
    /// The same for the raw channel, which serves downloads ([`StoreSession::open_read`]); each channel has its
    /// own `sftp-server` and so its own handle numbers.
    read_handles: Arc<tokio::sync::Semaphore>,
    /// A third channel, opened at the first long upload: it only fsyncs uploads as they arrive
    /// ([`StoreSession::open_for_writeback`]). `None` inside when it could not be opened.
    writebacks: tokio::sync::OnceCell<Option<Arc<RawSftpSession>>>,
    /// The same limit for that channel.
    writeback_handles: Arc<tokio::sync::Semaphore>,
    /// Seconds an SFTP request may take, for channels opened later.
    request_timeout: u64,
    ssh: client::Handle<PinnedHostKey>,
}

/// Most files and directories the gateway keeps open at once on one SFTP session; further transfers wait for a
/// permit (they queue, they are not refused).
///
/// Why: russh-sftp 3.0.1 keeps SFTP handles as `String`s decoded lossily from UTF-8, and OpenSSH's sftp-server
/// numbers its handles 0, 1, 2, … as 4 big-endian bytes, reusing freed numbers first. Handle 128 and above contain a
/// byte ≥ 0x80, which the lossy decoding mangles, so every read, write and close on it fails (found by the
/// 1,000-device benchmark: exactly 128 failures with 300 devices). Below 128 every handle is plain ASCII. A close
/// is queued on the channel before the permit is released, so the server frees the number before a later open
/// can ask for one. It also bounds the gateway's memory: a download holds its permit until it ends, also after it
/// has read the whole file and closed its handle (its window is still in memory, for resends), so at most this many
/// downloads hold a window or read ahead at once.
pub const MAX_OPEN_HANDLES: usize = 32;

/// Which of a session's SFTP channels a request goes to (a third one only fsyncs long uploads,
/// [`StoreSession::open_for_writeback`]). On OpenSSH each channel is an `sftp-server` process of
/// its own, and a request waits for that process to be scheduled: a download's symlink check, stat and open go out
/// together on the channel of its reads, so that they wake one process, not two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Listings, uploads, renames, removals.
    Main,
    /// Downloads: the check, stat and open of a `get` and then its reads ([`StoreSession::open_read`]).
    Reads,
}

/// A permit for one open handle ([`StoreSession::handle_permit`]).
pub type HandlePermit = tokio::sync::OwnedSemaphorePermit;

impl StoreSession {
    /// Waits for a permit to open one file or directory; hold it until the handle is closed (or its close queued).
    pub async fn handle_permit(&self) -> Option<HandlePermit> {
        self.handles.clone().acquire_owned().await.ok()
    }

    /// Opens `path` for a download on the raw channel, within that channel's open-handle limit. Downloads read
    /// chunk by chunk at offsets they choose ([`ReadFile::read_exact_at`]) so that the gateway, not the SFTP
    /// library, decides how much is read ahead (see `get.rs`).
    pub async fn open_read(self: &Arc<Self>, path: &str) -> Result<ReadFile, russh_sftp::client::error::Error> {
        let permit = self.read_handles.clone().acquire_owned().await.ok();
        let opened = self.ext.open(path, OpenFlags::READ, FileAttributes::empty()).await?;
        Ok(ReadFile { session: self.clone(), handle: opened.handle, permit })
    }

    /// Opens `path` (an upload's temporary file, being written on the main channel) on a channel of its own, to
    /// have the store write what it holds to disk while more arrives ([`WritebackFile::sync`]). `None` when the
    /// server lacks `fsync@openssh.com`, when that channel cannot be opened, when it has as many handles open as
    /// allowed (this never waits), or when the open fails: the upload then goes on without it, and its commit
    /// writes everything at once, as it always does.
    ///
    /// Why a channel of its own: on OpenSSH each channel is one `sftp-server` process that serves its requests
    /// one after another, and an fsync holds it until the disk has the data; on the main channel that would stall
    /// the upload's own writes, on the reads channel every download's reads.
    pub async fn open_for_writeback(&self, path: &str) -> Option<WritebackFile> {
        if !self.fsync {
            return None;
        }
        let permit = self.writeback_handles.clone().try_acquire_owned().ok()?;
        let channel = self
            .writebacks
            .get_or_init(|| async {
                match raw_channel(&self.ssh, self.request_timeout).await {
                    Ok((channel, _)) => Some(Arc::new(channel)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot open an SFTP channel for fsyncs during uploads");
                        None
                    }
                }
            })
            .await
            .clone()?;
        let opened = channel.open(path, OpenFlags::READ, FileAttributes::empty()).await.ok()?;
        Some(WritebackFile { channel, handle: opened.handle, permit: Some(permit) })
    }

    /// The real path of `path` (symlinks resolved), asked on `channel`.
    pub async fn realpath(&self, channel: Channel, path: &str) -> Result<String, russh_sftp::client::error::Error> {
        match channel {
            Channel::Main => self.sftp.canonicalize(path).await,
            Channel::Reads => raw_realpath(&self.ext, path).await,
        }
    }

    /// `path` made absolute as written, without resolving anything: a relative path is taken from the login
    /// directory. When no symlink is on its way, this is what [`realpath`](Self::realpath) answers for it.
    pub fn absolute<'a>(&self, path: &'a str) -> Cow<'a, str> {
        absolute_from(&self.home, path)
    }

    /// `stat` (symlinks followed) on the channel of downloads.
    pub async fn stat_for_read(&self, path: &str) -> Result<FileAttributes, russh_sftp::client::error::Error> {
        Ok(self.ext.stat(path).await?.attrs)
    }

    /// `read_dir` within the open-handle limit.
    pub async fn list_dir(
        &self,
        path: &str,
    ) -> Result<russh_sftp::client::fs::ReadDir, russh_sftp::client::error::Error> {
        let _permit = self.handle_permit().await;
        self.sftp.read_dir(path).await
    }

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
const LIMITS: &str = "limits@openssh.com";

/// Read length assumed when the server does not state its limit: every SFTP server is expected to answer reads
/// of 32 KiB in full; common ones (OpenSSH, the embedded server) answer far more. Shorter answers are read on.
pub const DEFAULT_MAX_READ: u32 = 64 * 1024;

/// Write request length used when the server does not state its limit: russh-sftp's default, 32 KiB with the
/// request's fields, which every SFTP server takes.
const DEFAULT_WRITE_PACKET: u32 = 32 * 1024;

/// Longest write sent, whatever the server allows (OpenSSH takes 255 KiB; a chunk may be up to 1 MiB, and is then
/// written in several).
const MAX_WRITE: u32 = 256 * 1024;

/// Bytes of an upload sent to the store and not yet confirmed, at most (in whole writes, from two to 64).
const WRITES_IN_FLIGHT: u32 = 512 * 1024;

/// The most a WRITE request holds besides its data: its fields (russh-sftp counts 25 bytes) and the handle (at most
/// 256 bytes in SFTP; OpenSSH's are 4). Added to the data length, so that only the server's own limit cuts a write.
const WRITE_HEADER: u32 = 25 + 256;

/// How uploads write through russh-sftp's `File`.
///
/// Each write is as long as the store takes (OpenSSH's `limits@openssh.com`: 255 KiB, so one chunk of the default
/// size is one write), not russh-sftp's 32 KiB: sshd then spent a quarter less CPU per GiB uploaded, and uploads
/// were 4–17 % faster (docs/performance.md). As many writes go out unconfirmed as make [`WRITES_IN_FLIGHT`]
/// bytes, as before (16 of 32 KiB), so that a slow store makes the gateway hold no more of an upload than then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Writes {
    /// russh-sftp's `max_write_packet_len`: the longest WRITE request, data and fields. russh-sftp also cuts a
    /// write at the server's stated limit.
    packet: u32,
    /// Writes sent and not yet confirmed, at most.
    in_flight: usize,
}

impl Writes {
    /// For a store whose stated write limit is `limit` (`None`: it states none).
    fn for_limit(limit: Option<u64>) -> Writes {
        let (data, packet) = match limit {
            Some(n) => {
                let data = u32::try_from(n).unwrap_or(u32::MAX).min(MAX_WRITE);
                (data, data + WRITE_HEADER)
            }
            None => (DEFAULT_WRITE_PACKET, DEFAULT_WRITE_PACKET),
        };
        Writes { packet, in_flight: (WRITES_IN_FLIGHT / data).clamp(2, 64) as usize }
    }
}

/// A file open for reading ([`StoreSession::open_read`]). Dropping it closes the handle: the close goes out on a
/// task of its own, and the handle permit, unless taken out ([`ReadFile::take_permit`]), is released once the server
/// has answered it.
pub struct ReadFile {
    session: Arc<StoreSession>,
    handle: String,
    permit: Option<HandlePermit>,
}

impl ReadFile {
    /// The handle permit, for a caller that keeps it beyond the handle (a download, until it ends).
    pub fn take_permit(&mut self) -> Option<HandlePermit> {
        self.permit.take()
    }

    /// Most bytes one read of this file returns ([`StoreSession::max_read`]).
    pub fn max_read(&self) -> u32 {
        self.session.max_read
    }

    /// `len` bytes at `offset`, in as many SFTP reads as the server needs (OpenSSH answers at most 255 KiB per
    /// read). Fewer bytes only when the file ends first.
    pub async fn read_exact_at(&self, offset: u64, len: u32) -> Result<Vec<u8>, russh_sftp::client::error::Error> {
        let mut data = self.session.ext.read(self.handle.as_str(), offset, len).await?.data;
        while data.len() < len as usize {
            let at = offset + data.len() as u64;
            match self.session.ext.read(self.handle.as_str(), at, len - data.len() as u32).await {
                Ok(more) if !more.data.is_empty() => data.extend_from_slice(&more.data),
                Ok(_) => break,
                Err(russh_sftp::client::error::Error::Status(s)) if s.status_code == StatusCode::Eof => break,
                Err(e) => return Err(e),
            }
        }
        Ok(data)
    }
}

impl Drop for ReadFile {
    fn drop(&mut self) {
        close_later(self.session.ext.clone(), std::mem::take(&mut self.handle), self.permit.take());
    }
}

/// An upload's temporary file, opened read-only on the writeback channel ([`StoreSession::open_for_writeback`]).
pub struct WritebackFile {
    channel: Arc<RawSftpSession>,
    handle: String,
    permit: Option<HandlePermit>,
}

impl WritebackFile {
    /// Has the store fsync the file: what was written to it so far (through any handle) goes to disk. Advisory:
    /// the commit's own fsync is what makes an upload durable, and reports any error writing it.
    pub async fn sync(&self) -> Result<(), russh_sftp::client::error::Error> {
        self.channel.fsync(self.handle.as_str()).await.map(drop)
    }

    /// Closes the handle and waits for the server's answer (dropping it closes in the background).
    pub async fn close(mut self) {
        let _ = self.channel.close(std::mem::take(&mut self.handle)).await;
        drop(self.permit.take());
    }
}

impl Drop for WritebackFile {
    fn drop(&mut self) {
        if !self.handle.is_empty() {
            close_later(self.channel.clone(), std::mem::take(&mut self.handle), self.permit.take());
        }
    }
}

/// Closes `handle` on `channel` in the background (a drop cannot wait), then releases its permit: the server frees
/// the handle's number before another open can take the permit.
fn close_later(channel: Arc<RawSftpSession>, handle: String, permit: Option<HandlePermit>) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ = channel.close(handle).await;
            drop(permit);
        });
    }
}

impl std::ops::Deref for StoreSession {
    type Target = SftpSession;
    fn deref(&self) -> &SftpSession {
        &self.sftp
    }
}

/// The SSH ciphers the gateway offers, best first. With AES instructions (AES-NI and CLMUL on x86-64, the AES
/// extension on aarch64) AES-GCM costs a fraction of ChaCha20-Poly1305, russh's first choice: in a profile of the
/// gateway moving 256 MiB each way, ChaCha20 + Poly1305 took 12% of its CPU samples and the AES-GCM of the broker's
/// TLS 2% (docs/performance.md). Without them ChaCha20-Poly1305 stays first, as software AES is slow and leaks
/// timing.
pub fn preferred_ciphers() -> &'static [russh::cipher::Name] {
    use russh::cipher::{AES_128_CTR, AES_128_GCM, AES_256_CTR, AES_256_GCM, CHACHA20_POLY1305};
    const AES_FIRST: &[russh::cipher::Name] = &[AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305, AES_256_CTR, AES_128_CTR];
    const CHACHA_FIRST: &[russh::cipher::Name] =
        &[CHACHA20_POLY1305, AES_128_GCM, AES_256_GCM, AES_256_CTR, AES_128_CTR];
    if has_aes_instructions() {
        AES_FIRST
    } else {
        CHACHA_FIRST
    }
}

/// The cipher a gateway on this machine negotiates with a server offering all of [`preferred_ciphers`] (OpenSSH
/// does), as OpenSSH names it.
pub fn preferred_cipher_name() -> &'static str {
    preferred_ciphers().first().map(|c| c.as_ref()).unwrap_or("")
}

fn has_aes_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
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
    let key = load_key(cfg)?;
    let config = client::Config {
        preferred: preferred_algorithms(),
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
    let start_err = |e| StoreError::Sftp { op: "start sftp on", path: host.clone(), source: e };
    let request_timeout = cfg.request_timeout.as_secs().max(1);
    // The raw channel first: the server's extensions and limits decide how the session below writes.
    let (ext, version) = raw_channel(&session, request_timeout).await.map_err(|e| match e {
        RawChannelError::Ssh(e) => ssh_err(e),
        RawChannelError::Sftp(e) => start_err(e),
    })?;
    let offers = |name: &str| version.extensions.contains_key(name);
    let (fsync, posix_rename) = (offers("fsync@openssh.com"), offers(POSIX_RENAME));
    let (mut max_read, mut server_max_write) = (DEFAULT_MAX_READ, None);
    if offers(LIMITS) {
        let limits = ext.limits().await.map_err(start_err)?;
        if limits.max_read_len > 0 {
            max_read = u32::try_from(limits.max_read_len).unwrap_or(u32::MAX);
        }
        server_max_write = Some(limits.max_write_len).filter(|&n| n > 0);
    }
    let writes = Writes::for_limit(server_max_write);
    let channel = session.channel_open_session().await.map_err(ssh_err)?;
    channel.request_subsystem(true, "sftp").await.map_err(ssh_err)?;
    let sftp_cfg = russh_sftp::client::Config {
        // russh-sftp's `File` reads ahead up to 16 requests of 255 KiB per open file by default, which made the
        // gateway's memory grow with the number of downloads far beyond their windows. Downloads now read chunk
        // by chunk on the raw channel (`open_read`, with read-ahead accounted in get.rs); nothing reads through
        // `File` any more, and this keeps it that way should something start to.
        max_concurrent_reads: 1,
        max_write_packet_len: writes.packet,
        max_concurrent_writes: writes.in_flight,
        request_timeout_secs: request_timeout,
        ..Default::default()
    };
    let sftp = SftpSession::new_with_config(channel.into_stream(), sftp_cfg).await.map_err(start_err)?;
    let home = raw_realpath(&ext, ".").await.map_err(start_err)?;
    let handles = Arc::new(tokio::sync::Semaphore::new(MAX_OPEN_HANDLES));
    let read_handles = Arc::new(tokio::sync::Semaphore::new(MAX_OPEN_HANDLES));
    Ok(StoreSession {
        sftp,
        ext: Arc::new(ext),
        fsync,
        posix_rename,
        max_read,
        home,
        handles,
        read_handles,
        writebacks: tokio::sync::OnceCell::new(),
        writeback_handles: Arc::new(tokio::sync::Semaphore::new(MAX_OPEN_HANDLES)),
        request_timeout,
        ssh: session,
    })
}

/// Why [`raw_channel`] failed.
#[derive(Debug, thiserror::Error)]
enum RawChannelError {
    #[error("opening an SSH channel for SFTP failed: {0}")]
    Ssh(#[from] russh::Error),
    #[error("starting SFTP on a new channel failed: {0}")]
    Sftp(#[from] russh_sftp::client::error::Error),
}

/// A new SFTP channel on `ssh`, driven by the raw session (requests sent as they are), and the server's version
/// answer (its extensions).
async fn raw_channel(
    ssh: &client::Handle<PinnedHostKey>,
    request_timeout: u64,
) -> Result<(RawSftpSession, russh_sftp::protocol::Version), RawChannelError> {
    let channel = ssh.channel_open_session().await?;
    channel.request_subsystem(true, "sftp").await?;
    let raw = RawSftpSession::new(channel.into_stream());
    raw.set_timeout(request_timeout);
    let version = raw.init().await?;
    Ok((raw, version))
}

/// The real path of `path`, asked on a raw channel (which answers with a list of names: the first is it).
async fn raw_realpath(raw: &RawSftpSession, path: &str) -> Result<String, russh_sftp::client::error::Error> {
    match raw.realpath(path).await?.files.into_iter().next() {
        Some(file) => Ok(file.filename),
        None => Err(russh_sftp::client::error::Error::UnexpectedBehavior(format!("realpath {path}: no name"))),
    }
}

/// `path` made absolute from the directory `home` (an absolute path, as `realpath .` answers it), lexically.
fn absolute_from<'a>(home: &str, path: &'a str) -> Cow<'a, str> {
    if path.starts_with('/') {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(format!("{}/{path}", home.trim_end_matches('/')))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The symlink check's shortcut holds only when this is exactly what `realpath` answers for a path without
    /// symlinks: one slash between the parts, also below a chroot whose login directory is `/`.
    #[test]
    fn store_paths_are_made_absolute_as_realpath_writes_them() {
        assert_eq!(absolute_from("/", "devices/a/f.bin"), "/devices/a/f.bin");
        assert_eq!(absolute_from("/home/mqsftp", "devices/a"), "/home/mqsftp/devices/a");
        assert_eq!(absolute_from("/home/mqsftp/", "devices/a"), "/home/mqsftp/devices/a");
        assert!(matches!(absolute_from("/home/mqsftp", "/srv/store/a"), Cow::Borrowed("/srv/store/a")));
    }

    #[test]
    fn only_modern_algorithms_are_offered() {
        let p = preferred_algorithms();
        let names: Vec<String> = p
            .kex
            .iter()
            .map(|n| n.as_ref().to_string())
            .chain(p.key.iter().map(|a| a.to_string()))
            .chain(p.cipher.iter().map(|n| n.as_ref().to_string()))
            .chain(p.mac.iter().map(|n| n.as_ref().to_string()))
            .collect();
        for bad in ["sha1", "cbc", "3des", "dss", "group1", "group14", "none"] {
            assert!(!names.iter().any(|n| n.contains(bad)), "{bad} in {names:?}");
        }
        assert!(!p.key.contains(&russh::keys::Algorithm::Rsa { hash: None }), "ssh-rsa with SHA-1 signatures");
        assert!(names.contains(&"kex-strict-c-v00@openssh.com".to_string()), "strict kex (Terrapin)");
    }

    /// Uploads write in the longest pieces the store takes, with about 512 KiB unconfirmed: a default chunk is one
    /// write to OpenSSH, whatever the length of the handle; a store that states no limit gets russh-sftp's 32 KiB
    /// requests, 16 in flight, as before; no limit makes writes longer than 256 KiB or keeps fewer than two or more
    /// than 64 in flight.
    #[test]
    fn uploads_write_as_much_as_the_store_takes_at_once() {
        let openssh = Writes::for_limit(Some(261_120));
        assert_eq!(openssh, Writes { packet: 261_120 + 25 + 256, in_flight: 2 });
        let chunk = mqsftp_proto::StreamParams::default().chunk_size;
        assert!(chunk <= 261_120 && openssh.packet - 25 - 256 >= chunk, "a default chunk is one write");
        assert_eq!(Writes::for_limit(None), Writes { packet: 32 * 1024, in_flight: 16 });
        assert_eq!(Writes::for_limit(Some(64 * 1024)), Writes { packet: 64 * 1024 + 281, in_flight: 8 });
        assert_eq!(Writes::for_limit(Some(1 << 40)), Writes { packet: 256 * 1024 + 281, in_flight: 2 });
        assert_eq!(Writes::for_limit(Some(1)), Writes { packet: 1 + 281, in_flight: 64 });
    }
}
