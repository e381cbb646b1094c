//! An embedded SFTP server, so that `mqsftp demo` / `mqsftp dev` run on a machine with nothing but Rust.
//!
//! [`Sftpd`] serves one local directory over SSH (russh) with the SFTP v3 protocol (russh-sftp's packet
//! types), to one user, with the same checks a real deployment makes: public-key authentication only
//! against an OpenSSH `authorized_keys` file (as `mqsftp pki init` writes it), an Ed25519 host key that
//! clients pin in `known_hosts`, modern algorithms only, the `sftp` subsystem and nothing else (no
//! shell, exec, pty, port or agent forwarding), and every path confined to the served directory. There
//! is no accept-any login, not even in the demo.
//!
//! What it is **not**: a replacement for OpenSSH's sshd in production. It runs as the user that starts
//! it (no privilege separation, no chroot by the kernel: confinement is done by path resolution), it
//! has no rate limiting beyond a connection cap and russh's constant-time auth rejection, and it knows
//! one user. Deployments use OpenSSH (`pki/sshd_config`).
//!
//! Open files: by default a file may be renamed, replaced or removed while open, as on Linux. With
//! [`OpenFiles::Locked`] that is refused, as on a Windows store; the test suite runs its embedded stacks so,
//! which checks that the gateway closes its handles on a file before renaming or removing it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mqsftp_sftpd::SftpdError> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(mqsftp_sftpd::SftpdError::Listener)?;
//! let server = mqsftp_sftpd::Sftpd::start(listener, mqsftp_sftpd::SftpdConfig {
//!     root: "store".into(),
//!     host_key: "sftpd/host_ed25519".into(),
//!     authorized_keys: "pki/authorized_keys".into(),
//!     user: "mqsftp".into(),
//!     open_files: mqsftp_sftpd::OpenFiles::Shared,
//! }).await?;
//! println!("[127.0.0.1]:{} {}", server.local_addr().port(), server.host_public_key_openssh());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! * `lib.rs`: [`SftpdConfig`], [`Sftpd`] (accept loop, shutdown), [`SftpdError`].
//! * `keys.rs`: loading the host key and parsing `authorized_keys` (with line numbers in errors).
//! * `ssh.rs`: the russh server handler: authentication and which channels and requests are allowed.
//! * `sftp.rs`: the SFTP request loop. Requests run concurrently on the blocking thread pool, ordered so
//!   that a client sees the same results as from a sequential server (see its module doc).
//! * `fs.rs`: path confinement (`..`, symlinks) and the file system operations, with OpenSSH's mapping
//!   of errors to SFTP status codes.
//! * `tests/sftpd/`: one integration binary: OpenSSH's `sftp`/`ssh`, russh and the gateway's store session against
//!   the server. `examples/throughput.rs`: OpenSSH `sftp` get/put throughput (a benchmark that prints a table).

mod fs;
mod keys;
mod sftp;
mod ssh;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, warn, Instrument};

/// What [`Sftpd::start`] serves, and to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpdConfig {
    /// The directory served. Clients see it as `/`; no path leaves it (no `..` above it, no symlink out of it).
    pub root: PathBuf,
    /// The host key: an unencrypted OpenSSH private key file, Ed25519 (e.g. made by
    /// `mqsftp_pki::generate_ssh_key`).
    pub host_key: PathBuf,
    /// OpenSSH `authorized_keys`: the public keys allowed to log in (`restrict ssh-ed25519 AAAA… comment`).
    pub authorized_keys: PathBuf,
    /// The only user name accepted.
    pub user: String,
    /// Whether a file open in some session may be renamed, replaced or removed.
    pub open_files: OpenFiles,
}

/// What the server does when a client renames, replaces or removes a file that is open (in any session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpenFiles {
    /// It happens, as on any POSIX file system (OpenSSH on Linux): what `mqsftp demo` serves.
    #[default]
    Shared,
    /// It is refused (`SSH_FX_FAILURE`, naming the file), as a store on a Windows file system refuses to rename or
    /// delete a file opened without delete sharing. The test suite serves its embedded stores this way, so that a
    /// client that renames or removes a file it still has open fails there instead of only on such a store. Files
    /// only: a directory is renamed even while files in it are open (Windows would refuse that too).
    Locked,
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum SftpdError {
    /// The host key file is missing, unreadable, encrypted, or not an Ed25519 private key.
    #[error("host key {path}: {reason}")]
    HostKey { path: PathBuf, reason: String },
    /// The authorized_keys file cannot be read or lists no key.
    #[error("authorized_keys {path}: {reason}")]
    AuthorizedKeys { path: PathBuf, reason: String },
    /// A line of authorized_keys cannot be parsed or has an option this server cannot enforce.
    #[error("authorized_keys {path} line {line}: {reason}")]
    AuthorizedKeysLine { path: PathBuf, line: usize, reason: String },
    /// The served directory does not exist or is not a directory.
    #[error("root directory {path}: {reason}")]
    Root { path: PathBuf, reason: String },
    /// The user name is empty or has characters no SSH client sends.
    #[error("user name {user:?}: {reason}")]
    User { user: String, reason: &'static str },
    /// The listener cannot tell its address.
    #[error("the listener has no local address: {0}")]
    Listener(#[source] std::io::Error),
}

/// At most this many SSH connections at once; more are closed right after accept.
const MAX_CONNECTIONS: usize = 64;
/// How long [`Sftpd::shutdown`] waits for connections to end after telling them to disconnect.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A running SFTP server. Dropping it without [`Sftpd::shutdown`] stops accepting too, but does not wait.
pub struct Sftpd {
    local_addr: SocketAddr,
    host_public_key: String,
    stop: watch::Sender<bool>,
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl Sftpd {
    /// Loads and checks the configuration, then serves on `listener` (already bound, so there is no port race)
    /// until [`Sftpd::shutdown`].
    pub async fn start(listener: TcpListener, config: SftpdConfig) -> Result<Sftpd, SftpdError> {
        let local_addr = listener.local_addr().map_err(SftpdError::Listener)?;
        keys::check_user(&config.user)?;
        let host_key = keys::load_host_key(&config.host_key)?;
        let authorized = keys::load_authorized_keys(&config.authorized_keys)?;
        let root = fs::Root::open(&config.root, config.open_files)?;
        let host_public_key = keys::public_openssh(&host_key, &config.host_key)?;
        let shared = Arc::new(ssh::Shared { user: config.user.clone(), authorized, root: Arc::new(root) });
        let ssh_config = Arc::new(ssh::server_config(host_key));
        let (stop, stopped) = watch::channel(false);
        let span = info_span!("sftpd", addr = %local_addr);
        info!(parent: &span, root = %config.root.display(), user = %config.user, "SFTP server listening");
        let accept = tokio::spawn(accept_loop(listener, ssh_config, shared, stopped).instrument(span));
        Ok(Sftpd { local_addr, host_public_key, stop, accept: Some(accept) })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The host's public key, `ssh-ed25519 AAAA…` (no comment), for a known_hosts line.
    pub fn host_public_key_openssh(&self) -> String {
        self.host_public_key.clone()
    }

    /// Stops accepting, disconnects every session and waits (briefly) until they have ended.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
    }
}

impl Drop for Sftpd {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    shared: Arc<ssh::Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let mut next_id: u64 = 0;
    loop {
        tokio::select! {
            () = stop_requested(&mut stopped) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    next_id += 1;
                    if connections.len() >= MAX_CONNECTIONS {
                        warn!(%peer, limit = MAX_CONNECTIONS, "too many connections; closing the new one");
                        continue;
                    }
                    let span = info_span!("connection", id = next_id, %peer);
                    let handler = ssh::Connection::new(shared.clone(), span.clone());
                    let conn = serve_connection(socket, config.clone(), handler, stopped.clone());
                    connections.spawn(conn.instrument(span));
                }
                Err(e) => {
                    // Running out of file descriptors and the like: log, pause a little, go on.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    drop(listener);
    info!(connections = connections.len(), "SFTP server stopping");
    let all_ended = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, all_ended).await.is_err() {
        connections.abort_all();
    }
}

async fn serve_connection(
    socket: tokio::net::TcpStream,
    config: Arc<russh::server::Config>,
    handler: ssh::Connection,
    mut stopped: watch::Receiver<bool>,
) {
    let _ = socket.set_nodelay(true);
    debug!("connection accepted");
    let session = match russh::server::run_stream(config, socket, handler).await {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "SSH handshake failed");
            return;
        }
    };
    let handle = session.handle();
    tokio::select! {
        result = session => match result {
            Ok(()) => debug!("connection closed"),
            // A client that just goes away (no SSH disconnect message) is not worth more than a debug line.
            Err(russh::Error::IO(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => debug!("connection closed"),
            Err(russh::Error::Disconnect) => debug!("connection closed"),
            Err(e) => info!(error = %e, "connection ended with an error"),
        },
        () = stop_requested(&mut stopped) => {
            let reason = "server shutting down".to_string();
            let _ = handle.disconnect(russh::Disconnect::ByApplication, reason, String::new()).await;
        }
    }
}

/// Resolves once a stop was requested (or the [`Sftpd`] is gone).
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}
