//! `device.toml`, validated at load; relative paths resolve against the file's directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mqsftp_mqtt::BrokerConfig;
use mqsftp_proto::{DeviceId, HashAlg};
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
    /// The hash every transfer is verified with end to end: `blake3` (the default; ~4× faster than SHA-256) or
    /// `sha256` (to compare with `sha256sum`).
    pub hash: HashAlg,
}

impl Default for DeviceTransferConfig {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(15), hash: HashAlg::Blake3 }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn load_with(transfer: &str) -> Result<DeviceConfig, DeviceError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.toml");
        let text = format!(
            "device_id = \"d1\"\n[broker]\nhost = \"localhost\"\nport = 8883\nca = \"ca.crt\"\ncert = \"d.crt\"\n\
             key = \"d.key\"\n{transfer}"
        );
        std::fs::write(&path, text).unwrap();
        DeviceConfig::load(&path)
    }

    #[test]
    fn the_hash_is_blake3_unless_the_file_names_another() {
        assert_eq!(load_with("").unwrap().transfer.hash, HashAlg::Blake3);
        assert_eq!(load_with("[transfer]\ntimeout = \"5s\"\n").unwrap().transfer.hash, HashAlg::Blake3);
        assert_eq!(load_with("[transfer]\nhash = \"sha256\"\n").unwrap().transfer.hash, HashAlg::Sha256);
        let e = load_with("[transfer]\nhash = \"md5\"\n").unwrap_err().to_string();
        assert!(e.contains("device.toml") && e.contains("md5") && e.contains("hash"), "{e}");
    }
}
