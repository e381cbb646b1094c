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
    /// A certificate would be valid longer than the CA that signs it.
    #[error(
        "a {what} lifetime of {days} days outlasts the CA certificate (valid until {ca_until}); choose fewer days"
    )]
    LifetimeBeyondCa {
        /// Which certificate.
        what: &'static str,
        /// The requested number of days.
        days: u32,
        /// End of the CA's validity.
        ca_until: String,
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
    /// A passphrase source that cannot be used (the message never contains the passphrase).
    #[error("cannot use the {source_name} as a passphrase: {reason}")]
    Passphrase {
        /// "passphrase file PATH" or "environment variable NAME".
        source_name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A key is encrypted and no passphrase was given.
    #[error("{0} is encrypted; give its passphrase with --passphrase-file FILE or the MQSFTP_PKI_PASSPHRASE environment variable")]
    EncryptedKey(PathBuf),
    /// The passphrase does not decrypt the key.
    #[error("wrong passphrase for {0} (or the key file is damaged)")]
    WrongPassphrase(PathBuf),
    /// A key that is to be encrypted already is.
    #[error("{0} is already encrypted")]
    AlreadyEncrypted(PathBuf),
    /// A file that should hold a private key holds something else.
    #[error("{path} is not a usable private key: {reason}")]
    UnsupportedKey {
        /// The key file.
        path: PathBuf,
        /// What it holds instead.
        reason: String,
    },
    /// Encrypting a key failed.
    #[error("cannot encrypt {path}: {reason}")]
    KeyEncryption {
        /// The key file.
        path: PathBuf,
        /// pkcs8's error.
        reason: String,
    },
    /// The index of issued certificates cannot be read or is damaged.
    #[error("certificate index {path}: {reason}")]
    Index {
        /// `DIR/issued.json`.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A device certificate that cannot be read.
    #[error("cannot read the certificate {path}: {reason}")]
    InvalidCert {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A device that was never issued a certificate in this PKI.
    #[error("device {id} has no certificate in {dir} and none in the certificate index")]
    UnknownDevice {
        /// The device id.
        id: String,
        /// `DIR/devices/ID`.
        dir: PathBuf,
    },
    /// Every certificate of the device is revoked already.
    #[error("every certificate of device {0} is already revoked")]
    AlreadyRevoked(String),
    /// `--reissue` for a device that has no certificate yet.
    #[error("device {id} cannot be re-issued: {path} does not exist (issue it without --reissue)")]
    NothingToReissue {
        /// The device id.
        id: String,
        /// The missing certificate.
        path: PathBuf,
    },
    /// An unknown revocation reason.
    #[error("unknown revocation reason {0:?}; use one of: {reasons}", reasons = crate::crl::REASONS)]
    InvalidReason(String),
    /// The operating system's random number generator failed.
    #[error("cannot get random bytes from the operating system")]
    Random(#[source] rand::Error),
}

impl PkiError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { action, path: path.into(), source }
    }
}
