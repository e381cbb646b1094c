//! The mqsftp device client: a library for device firmware and the `mqsftp` CLI.
//!
//! [`Client::connect`] opens one MQTT connection (mutual TLS) and subscribes to this client's own response and
//! download topics; [`Client::get`] downloads a file into a temporary file beside the target and renames it into
//! place only after size and SHA-256 match. The protocol logic is `mqsftp_proto::Receiver`; this crate does the
//! I/O around it.
//!
//! Layout: `config.rs` (`device.toml`), `client.rs` (the client), `file_io.rs` (the part file of a download and
//! the file of an upload, each on a blocking thread of its own), this file (errors).
//!
//! Building it into firmware: set `AWS_LC_SYS_NO_JITTER_ENTROPY=1` in the build environment, as this repository's
//! `.cargo/config.toml` does. Otherwise aws-lc (rustls's crypto) gathers CPU jitter entropy at the first TLS
//! connection of each process, 60–100 ms of CPU here (a whole 1 KiB `mqsftp get` went from 80 to 15 ms without
//! it) and far more on slow boards; it seeds from the OS random source either way.

pub mod check;
mod client;
mod config;
mod file_io;

use std::path::PathBuf;
use std::time::Duration;

pub use client::{Client, GetOutcome, Progress, PutOutcome};
pub use config::{DeviceConfig, DeviceTransferConfig};
pub use mqsftp_mqtt::MqttError;
pub use mqsftp_proto::{Entry, EntryKind, ErrorCode};

impl DeviceError {
    /// Whether trying again (after reconnecting, resuming from what is held) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            DeviceError::NoGateway { .. } | DeviceError::Stalled { .. } | DeviceError::Closed(_) => true,
            DeviceError::Remote { code, .. } => {
                matches!(code, ErrorCode::Timeout | ErrorCode::Unavailable | ErrorCode::Busy)
            }
            DeviceError::Mqtt(e) => !e.is_tls() && !matches!(e, MqttError::SubscriptionRefused { .. }),
            _ => false,
        }
    }
}

/// What went wrong on the device side.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The config file is unreadable or invalid.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// The broker connection failed (TLS, refusal, unreachable).
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    /// No gateway answered.
    #[error("no gateway answered within {after:?} (is the gateway running and connected to the broker?)")]
    NoGateway { after: Duration },
    /// The gateway refused or failed the request.
    #[error("{code}: {message}")]
    Remote { code: ErrorCode, message: String },
    /// The gateway stopped sending in the middle of a transfer.
    #[error("transfer stalled: nothing from the gateway for {after:?} after {received} of {size} bytes")]
    Stalled { after: Duration, received: u64, size: u64 },
    /// What was received of `remote` failed verification in each of `attempts` downloads (every one started again
    /// from nothing); nothing was written at `path`.
    #[error(
        "{remote}: the received data failed verification in {attempts} downloads, each started again from nothing; \
         {path} was not written (last: {error})",
        path = path.display()
    )]
    Integrity { remote: String, path: PathBuf, attempts: u32, error: mqsftp_proto::ReceiveError },
    /// A local file could not be written.
    #[error("{path}: {source}")]
    Local { path: PathBuf, source: std::io::Error },
    /// The local file changed while it was being uploaded.
    #[error("{path}: {reason}")]
    LocalChanged { path: PathBuf, reason: String },
    /// The local target is not usable.
    #[error("bad local path {path}: {reason}")]
    LocalPath { path: PathBuf, reason: String },
    /// The broker connection closed.
    #[error("the broker connection closed: {0}")]
    Closed(String),
}
