//! `issue_device`: a device's certificate, key and config, signed by the CA that `init` made.

use std::path::{Path, PathBuf};

use mqsftp_proto::DeviceId;

use crate::certs;
use crate::fsutil::{self, Batch, Kind};
use crate::init::{files, DEFAULT_BROKER_PORT, DEFAULT_CERT_DAYS};
use crate::names::Host;
use crate::templates;
use crate::PkiError;

/// Names of the files [`issue_device`] writes in `DIR/devices/ID/`.
pub mod device_files {
    /// Copy of the CA certificate, to verify the broker.
    pub const CA_CERT: &str = "ca.crt";
    /// The device's client certificate (CN = device id).
    pub const CERT: &str = "device.crt";
    /// The device's private key.
    pub const KEY: &str = "device.key";
    /// The device's configuration.
    pub const CONFIG: &str = "device.toml";
}

/// How [`issue_device`] configures a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceOptions {
    /// Broker host the device connects to; must be one of the broker certificate's names.
    pub broker_host: String,
    /// Broker port.
    pub broker_port: u16,
    /// Lifetime of the device certificate, in days.
    pub cert_days: u32,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self { broker_host: "localhost".to_string(), broker_port: DEFAULT_BROKER_PORT, cert_days: DEFAULT_CERT_DAYS }
    }
}

/// The files [`issue_device`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFiles {
    /// `DIR/devices/ID`: copy this directory to the device.
    pub dir: PathBuf,
    /// `device.toml`.
    pub config: PathBuf,
    /// `device.crt`.
    pub cert: PathBuf,
    /// `device.key` (mode 0600).
    pub key: PathBuf,
    /// `ca.crt` (a copy of the CA certificate).
    pub ca: PathBuf,
}

/// Validates a device id given as text; the error names it.
pub fn parse_device_id(id: &str) -> Result<DeviceId, PkiError> {
    Ok(DeviceId::new(id)?)
}

/// Issues device `id` a client certificate (CN = id, clientAuth) signed by the CA in `dir`
/// (`dir/ca.key`, `dir/ca.crt`), and writes `dir/devices/ID/` with `ca.crt`, `device.crt`,
/// `device.key` (0600) and `device.toml`.
///
/// Refuses, writing nothing, when the device already has a key or any of its files exists.
pub fn issue_device(dir: &Path, id: &DeviceId, opts: &DeviceOptions) -> Result<DeviceFiles, PkiError> {
    let broker_host = Host::parse(&opts.broker_host)?;
    let device_dir = dir.join(files::DEVICES_DIR).join(id.as_str());
    let out = DeviceFiles {
        config: device_dir.join(device_files::CONFIG),
        cert: device_dir.join(device_files::CERT),
        key: device_dir.join(device_files::KEY),
        ca: device_dir.join(device_files::CA_CERT),
        dir: device_dir,
    };
    fsutil::ensure_absent(&out.key, Kind::Secret)?;
    for path in [&out.cert, &out.ca, &out.config] {
        fsutil::ensure_absent(path, Kind::Public)?;
    }

    let (ca, ca_pem) = certs::load_ca(&dir.join(files::CA_KEY), &dir.join(files::CA_CERT))?;
    let issued = certs::client_cert(&ca, id.as_str(), "device certificate", opts.cert_days)?;
    let config = templates::device_toml(id.as_str(), &broker_host, opts.broker_port);

    let mut batch = Batch::new(None);
    batch.create_dir(&out.dir)?;
    batch.write(out.key.clone(), issued.key_pem.as_bytes(), Kind::Secret)?;
    batch.write(out.cert.clone(), issued.cert_pem.as_bytes(), Kind::Public)?;
    batch.write(out.ca.clone(), ca_pem.as_bytes(), Kind::Public)?;
    batch.write(out.config.clone(), config.as_bytes(), Kind::Public)?;
    batch.commit();
    Ok(out)
}
