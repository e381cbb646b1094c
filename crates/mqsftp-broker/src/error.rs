//! [`BrokerError`]: why the broker could not start.

use std::path::PathBuf;

/// Why [`crate::Broker::start`] failed. Nothing was started when it returns one of these.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which file it is ("the CA certificate", ...).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{what} {path} is not usable: {reason}")]
    Pem {
        /// Which file it is.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A line of the ACL file is not understood.
    #[error("ACL file {path}, line {line}: {reason}")]
    Acl {
        /// The ACL file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// rustls refused the certificates or key (e.g. the key does not match the certificate).
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The listener's address could not be read.
    #[error("cannot read the listener's local address: {0}")]
    LocalAddr(#[source] std::io::Error),
}
