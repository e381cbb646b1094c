//! The one error type of this crate.

use std::path::PathBuf;

use mqsftp_proto::DeviceIdError;

/// Why creating keys, certificates or config files failed.
///
/// The message names the offending path or value; the underlying cause, when there is one, is
/// available through [`std::error::Error::source`] and is not repeated in the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A key file this call would write already exists. Keys are never replaced silently.
    #[error("refusing to replace existing key {0}")]
    ExistingKey(PathBuf),
    /// A certificate or config file this call would write already exists.
    #[error("refusing to replace existing file {0}")]
    ExistingFile(PathBuf),
    /// A file of the CA (`ca.key` or `ca.crt`) is missing, so nothing can be signed.
    #[error("missing CA file {0}; create the CA with `mqsftp pki init` first")]
    MissingCa(PathBuf),
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
    /// A host name is neither a plain DNS name nor an IP address literal.
    #[error("invalid host name {host:?}: {reason}")]
    InvalidHost {
        /// The rejected value.
        host: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An SFTP user name that cannot be used as a Unix account and `Match User` argument.
    #[error("invalid SFTP user name {user:?}: {reason}")]
    InvalidUser {
        /// The rejected value.
        user: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An SSH key comment that contains a line break or another control character.
    #[error("invalid SSH key comment {0:?}: control characters are not allowed")]
    InvalidComment(String),
    /// A path that cannot be written into a config file (not UTF-8, or has control characters).
    #[error("path {path} cannot be written into {file}: {reason}")]
    UnusablePath {
        /// The rejected path.
        path: PathBuf,
        /// The config file it was meant for.
        file: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A certificate lifetime of zero days, or one that ends after the year 9999.
    #[error("invalid {what} lifetime of {days} days: it must be at least 1 day and end before the year 9999")]
    InvalidLifetime {
        /// Which certificate, e.g. "CA certificate".
        what: &'static str,
        /// The rejected number of days.
        days: u32,
    },
    /// A string that is not a valid device id (the inner error names it).
    #[error(transparent)]
    DeviceId(#[from] DeviceIdError),
    /// Generating a key pair or signing a certificate failed.
    #[error("cannot create {what}")]
    Certificate {
        /// What was being created, e.g. "the broker certificate".
        what: String,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// `ca.key` is not a private key rcgen can sign with.
    #[error("cannot load CA key {path}")]
    InvalidCaKey {
        /// The key file.
        path: PathBuf,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// `ca.crt` is not a PEM CA certificate.
    #[error("cannot load CA certificate {path}: {reason}")]
    InvalidCaCert {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `ca.key` and `ca.crt` do not belong together.
    #[error("key {key} does not match the CA certificate {cert}")]
    CaKeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// Text that should be an OpenSSH public key line does not parse as one.
    #[error("invalid SSH public key {what}")]
    InvalidPublicKey {
        /// The file it came from, or the start of the text.
        what: String,
        /// ssh-key's error.
        #[source]
        source: russh::keys::ssh_key::Error,
    },
    /// Encoding a freshly generated SSH key failed.
    #[error("cannot encode the SSH key for {0}")]
    SshKey(PathBuf, #[source] russh::keys::ssh_key::Error),
    /// The operating system's random number generator failed.
    #[error("cannot get random bytes from the operating system")]
    Random(#[source] rand::Error),
}

impl PkiError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { action, path: path.into(), source }
    }
}
