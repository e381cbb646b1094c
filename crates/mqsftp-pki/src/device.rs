//! `issue_device`: a device's certificate, key and config, signed by the CA that `init` made.

use std::path::{Path, PathBuf};

use mqsftp_proto::DeviceId;

use crate::certs;
use crate::crl::{self, DirLock, Index};
use crate::fsutil::{self, Batch, Kind, Replacements};
use crate::init::{files, DEFAULT_BROKER_PORT, DEFAULT_CERT_DAYS};
use crate::names::Host;
use crate::templates;
use crate::{Passphrase, PkiError};

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
    /// Passphrase of `ca.key`, when it is encrypted.
    pub passphrase: Option<Passphrase>,
    /// Replace the existing certificate and key of the device with new ones (new key, new
    /// serial). The previous certificate is revoked (reason "superseded") in the same step and
    /// `crl.pem` rewritten: a re-issue is usually because the old key is lost or exposed, and an
    /// old certificate left valid would be a second identity for the device. `device.toml` and
    /// `ca.crt` are kept.
    pub reissue: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            broker_host: "localhost".to_string(),
            broker_port: DEFAULT_BROKER_PORT,
            cert_days: DEFAULT_CERT_DAYS,
            passphrase: None,
            reissue: false,
        }
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
/// (`dir/ca.key`, decrypted with `opts.passphrase` if encrypted, and `dir/ca.crt`), writes
/// `dir/devices/ID/` with `ca.crt`, `device.crt`, `device.key` (0600) and `device.toml`, and
/// records the certificate in `dir/issued.json`.
///
/// Without `opts.reissue`, refuses, writing nothing, when the device already has a key or any of
/// its files exists. With it, the device must exist: its key and certificate are replaced and
/// the old certificate revoked, all together or not at all (see [`DeviceOptions::reissue`]).
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
    if opts.reissue {
        if !out.cert.exists() {
            return Err(PkiError::NothingToReissue { id: id.to_string(), path: out.cert });
        }
    } else {
        fsutil::ensure_absent(&out.key, Kind::Secret)?;
        for path in [&out.cert, &out.ca, &out.config] {
            fsutil::ensure_absent(path, Kind::Public)?;
        }
    }

    let ca = certs::load_ca(&dir.join(files::CA_KEY), &dir.join(files::CA_CERT), opts.passphrase.as_ref())?;
    let _lock = DirLock::acquire(dir)?;
    let mut index = Index::load(dir)?;
    let old = if opts.reissue { Some(certs::cert_info(&out.cert)?) } else { None };
    let issued = certs::client_cert(&ca.issuer, id.as_str(), "device certificate", opts.cert_days)?;
    if issued.not_after > ca.not_after {
        return Err(PkiError::LifetimeBeyondCa {
            what: "device certificate",
            days: opts.cert_days,
            ca_until: ca.not_after.date().to_string(),
        });
    }
    index.record(&issued);

    if let Some((serial, subject, not_after)) = old {
        crl::supersede(&mut index, &serial, &subject, not_after);
        let mut staged = Replacements::default();
        staged.stage(out.key.clone(), issued.key_pem.as_bytes(), Kind::Secret)?;
        staged.stage(out.cert.clone(), issued.cert_pem.as_bytes(), Kind::Public)?;
        crl::write_index_and_crl(dir, &mut index, &ca, staged)?;
        return Ok(out);
    }

    let config = templates::device_toml(id.as_str(), &broker_host, opts.broker_port);
    let mut batch = Batch::new(None);
    batch.create_dir(&out.dir)?;
    batch.write(out.key.clone(), issued.key_pem.as_bytes(), Kind::Secret)?;
    batch.write(out.cert.clone(), issued.cert_pem.as_bytes(), Kind::Public)?;
    batch.write(out.ca.clone(), ca.cert_pem.as_bytes(), Kind::Public)?;
    batch.write(out.config.clone(), config.as_bytes(), Kind::Public)?;
    // Last: if recording fails, the batch removes the device's files again.
    fsutil::replace(&dir.join(files::INDEX), index.to_json().as_bytes(), Kind::Public)?;
    batch.commit();
    Ok(out)
}
