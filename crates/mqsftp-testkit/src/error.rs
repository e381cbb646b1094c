//! The one error type of this crate.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use mqsftp_pki::PkiError;

/// Why a [`Stack`](crate::Stack) could not be set up, or a test file could not be made.
///
/// Startup failures carry the server's port, its log file and the tail of that log, so a failing
/// test shows why Mosquitto or sshd refused to run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// A server or client program is not installed.
    #[error(
        "{program} not found (looked at {looked}); run scripts/test, which installs mosquitto and \
         openssh-server (this one is in the Debian package {package})"
    )]
    MissingProgram {
        /// The program, e.g. "mosquitto".
        program: String,
        /// Where it was looked for.
        looked: String,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// Reading or writing a file or directory failed.
    #[error("cannot {action} {path}")]
    Io {
        /// What was being done, e.g. "write" or "create directory".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Generating certificates, keys or config files with mqsftp-pki failed.
    #[error("cannot {what}")]
    Pki {
        /// What was being made, e.g. "generate the PKI in /tmp/x/pki".
        what: String,
        /// mqsftp-pki's error.
        #[source]
        source: PkiError,
    },
    /// A helper command (such as `id -un`) could not be run.
    #[error("cannot run `{command}`")]
    Command {
        /// The command line.
        command: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A helper command ran but failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A helper command printed something unexpected.
    #[error("`{command}` printed {output:?}, not a number")]
    CommandOutput {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
    },
    /// No free port could be obtained from the kernel.
    #[error("cannot bind 127.0.0.1:0 to pick a free port")]
    FreePort(#[source] std::io::Error),
    /// A server program could not be started at all.
    #[error("cannot start {server} ({program})")]
    Spawn {
        /// "mosquitto" or "sshd".
        server: &'static str,
        /// The program.
        program: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A server exited before it accepted connections.
    #[error("{server} exited ({status}) before accepting connections on 127.0.0.1:{port}; log {}:\n{tail}", log.display())]
    Exited {
        /// "mosquitto" or "sshd".
        server: &'static str,
        /// The port it was meant to listen on.
        port: u16,
        /// How it exited.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// A server did not accept connections in time (it has been killed).
    #[error("{server} did not accept connections on 127.0.0.1:{port} within {waited:?}; log {}:\n{tail}", log.display())]
    Timeout {
        /// "mosquitto" or "sshd".
        server: &'static str,
        /// The port it was meant to listen on.
        port: u16,
        /// How long we waited.
        waited: Duration,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// A server found its port taken, on every port tried.
    #[error("{server} found its port in use {attempts} times (last 127.0.0.1:{port}); log {}:\n{tail}", log.display())]
    PortInUse {
        /// "mosquitto" or "sshd".
        server: &'static str,
        /// The last port tried.
        port: u16,
        /// How many ports were tried.
        attempts: u32,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// A server did not log an expected line in time.
    #[error("{server} did not log {needle:?} within {waited:?}; log {}:\n{tail}", log.display())]
    LogTimeout {
        /// "mosquitto" or "sshd".
        server: &'static str,
        /// The text waited for.
        needle: String,
        /// How long we waited.
        waited: Duration,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// A server could not be waited for or stopped.
    #[error("cannot {action} {server} (pid {pid})")]
    Process {
        /// What was being done, e.g. "kill".
        action: &'static str,
        /// "mosquitto" or "sshd".
        server: &'static str,
        /// Its process id.
        pid: u32,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The port of a killed server still accepts connections (another process has it).
    #[error("127.0.0.1:{port} still accepts connections {waited:?} after {server} was killed")]
    StillListening {
        /// "mosquitto" or "sshd".
        server: &'static str,
        /// Its port.
        port: u16,
        /// How long we waited.
        waited: Duration,
    },
    /// `start_*` was called while the server runs.
    #[error("{server} is already running (pid {pid}) on 127.0.0.1:{port}")]
    AlreadyRunning {
        /// "mosquitto" or "sshd".
        server: &'static str,
        /// Its process id.
        pid: u32,
        /// Its port.
        port: u16,
    },
    /// An embedded server failed, or something only a real server has (a log, a pid) was asked of one.
    #[error("embedded {server}: {reason}")]
    Embedded {
        /// "mqsftp-broker", "mqsftp-sftpd" or "runtime".
        server: &'static str,
        /// What happened.
        reason: String,
    },
    /// `kill_*` was called while the server is stopped.
    #[error("{server} is not running (its port was 127.0.0.1:{port})")]
    NotRunning {
        /// "mosquitto" or "sshd".
        server: &'static str,
        /// Its port.
        port: u16,
    },
    /// A file written by mqsftp-pki does not look as this crate expects.
    #[error("unexpected contents of {path}: {reason}")]
    UnexpectedFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A TOML file written by mqsftp-pki does not parse.
    #[error("cannot parse {path} as TOML")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: toml::de::Error,
    },
    /// A rewritten TOML file cannot be serialized.
    #[error("cannot serialize {path} as TOML")]
    TomlWrite {
        /// The file.
        path: PathBuf,
        /// The serializer's error.
        #[source]
        source: toml::ser::Error,
    },
    /// A test certificate could not be made.
    #[error("cannot make {what}: {reason}")]
    Certificate {
        /// Which certificate.
        what: String,
        /// rcgen's error.
        reason: String,
    },
    /// The SSH host key written by mqsftp-pki does not parse.
    #[error("invalid SSH host key {path}")]
    HostKey {
        /// The `.pub` file.
        path: PathBuf,
        /// ssh-key's error.
        #[source]
        source: russh::keys::ssh_key::Error,
    },
}

impl TestkitError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { action, path: path.into(), source }
    }

    pub(crate) fn pki(what: impl Into<String>, source: PkiError) -> Self {
        Self::Pki { what: what.into(), source }
    }
}
