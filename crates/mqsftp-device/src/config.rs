//! `device.toml`, validated at load; relative paths resolve against the file's directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mqsftp_mqtt::BrokerConfig;
use mqsftp_proto::DeviceId;
use serde::Deserialize;

use crate::DeviceError;

/// The whole `device.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// This device's id; must equal the CN of its certificate (the broker's ACL is keyed on the CN).
    pub device_id: DeviceId,
    /// The broker.
    pub broker: BrokerConfig,
    /// Timeouts.
    #[serde(default)]
    pub transfer: DeviceTransferConfig,
}

/// The `[transfer]` section.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceTransferConfig {
    /// How long to wait for the gateway to answer a request, or to send the next chunk.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for DeviceTransferConfig {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(15) }
    }
}

impl DeviceConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<DeviceConfig, DeviceError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| DeviceError::Config { path: path.into(), message: format!("cannot read: {e}") })?;
        let mut cfg: DeviceConfig =
            toml::from_str(&text).map_err(|e| DeviceError::Config { path: path.into(), message: e.to_string() })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        cfg.broker.resolve_paths(&base);
        if cfg.transfer.timeout.is_zero() {
            return Err(DeviceError::Config { path: path.into(), message: "transfer.timeout must be above 0".into() });
        }
        Ok(cfg)
    }
}
