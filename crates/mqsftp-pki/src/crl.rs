//! Revocation: the index of issued certificates (`DIR/issued.json`) and the CRL (`DIR/crl.pem`)
//! that Mosquitto checks client certificates against (`crlfile`).
//!
//! The index is the source of truth: every certificate this PKI issues is recorded there (serial,
//! CN, end of validity), and a revocation marks entries in it. `crl.pem` is always rebuilt from
//! the whole index and signed by the CA, with a CRL number one above the last. Both files are
//! replaced atomically, the index first: if the process dies between the two, the next revocation
//! or re-issue rebuilds a CRL that includes everything.
//!
//! The CRL's nextUpdate is the end of the CA certificate's validity. OpenSSL (so Mosquitto)
//! rejects every client once a CRL is past its nextUpdate, and nothing here re-publishes CRLs on a
//! schedule: the broker re-reads the file when told to, after each revocation. A short nextUpdate
//! would only lock every device out on a date nobody chose.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::certs::{self, Ca, Issued};
use crate::device::device_files;
use crate::fsutil::{Kind, Replacements};
use crate::init::files;
use crate::{DeviceId, Passphrase, PkiError};

/// The reasons [`RevokeReason::from_str`] accepts, for messages and `--help`.
pub const REASONS: &str =
    "unspecified, key-compromise, superseded, cessation-of-operation, affiliation-changed, privilege-withdrawn";

/// Why a certificate is revoked (RFC 5280 CRLReason), as recorded in the CRL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevokeReason {
    /// No reason given.
    Unspecified,
    /// The device's key leaked or the device was stolen.
    KeyCompromise,
    /// Replaced by a new certificate (what `--reissue` records).
    Superseded,
    /// The device is retired.
    CessationOfOperation,
    /// The device changed owner or role.
    AffiliationChanged,
    /// The device is no longer allowed to connect.
    PrivilegeWithdrawn,
}

impl FromStr for RevokeReason {
    type Err = PkiError;
    fn from_str(s: &str) -> Result<Self, PkiError> {
        Ok(match s {
            "unspecified" => Self::Unspecified,
            "key-compromise" => Self::KeyCompromise,
            "superseded" => Self::Superseded,
            "cessation-of-operation" => Self::CessationOfOperation,
            "affiliation-changed" => Self::AffiliationChanged,
            "privilege-withdrawn" => Self::PrivilegeWithdrawn,
            other => return Err(PkiError::InvalidReason(other.to_string())),
        })
    }
}

impl RevokeReason {
    fn rcgen(self) -> RevocationReason {
        match self {
            Self::Unspecified => RevocationReason::Unspecified,
            Self::KeyCompromise => RevocationReason::KeyCompromise,
            Self::Superseded => RevocationReason::Superseded,
            Self::CessationOfOperation => RevocationReason::CessationOfOperation,
            Self::AffiliationChanged => RevocationReason::AffiliationChanged,
            Self::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
        }
    }
}

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Entry {
    /// Serial number, lower-case hex.
    pub(crate) serial: String,
    /// CN: the device id, "gateway", or the broker's host.
    pub(crate) subject: String,
    /// End of validity, Unix seconds.
    pub(crate) not_after: i64,
    /// Set once revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) revoked: Option<Revocation>,
}

/// When and why a certificate was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Revocation {
    /// Unix seconds.
    pub(crate) at: i64,
    pub(crate) reason: RevokeReason,
}

/// `DIR/issued.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Index {
    /// Number of the last CRL written (0: none yet).
    pub(crate) crl_number: u64,
    pub(crate) certificates: Vec<Entry>,
}

impl Index {
    /// Reads the index of the PKI in `dir`; a PKI made before the index existed has none, which
    /// counts as empty.
    pub(crate) fn load(dir: &Path) -> Result<Index, PkiError> {
        let path = dir.join(files::INDEX);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Index::default()),
            Err(e) => return Err(PkiError::io("read", path, e)),
        };
        let index: Index =
            serde_json::from_str(&text).map_err(|e| PkiError::Index { path: path.clone(), reason: e.to_string() })?;
        if let Some(e) = index.certificates.iter().find(|e| hex_bytes(&e.serial).is_none()) {
            return Err(PkiError::Index { path, reason: format!("serial {:?} is not hex", e.serial) });
        }
        Ok(index)
    }

    pub(crate) fn to_json(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Records a newly issued certificate.
    pub(crate) fn record(&mut self, issued: &Issued) {
        self.record_serial(&issued.serial, &issued.subject, issued.not_after);
    }

    /// Records a certificate unless its serial is there already.
    fn record_serial(&mut self, serial: &str, subject: &str, not_after: OffsetDateTime) {
        if !self.certificates.iter().any(|e| e.serial == serial) {
            self.certificates.push(Entry {
                serial: serial.to_string(),
                subject: subject.to_string(),
                not_after: not_after.unix_timestamp(),
                revoked: None,
            });
        }
    }

    /// Marks every unrevoked certificate of `subject` revoked; returns their serials.
    fn revoke_subject(&mut self, subject: &str, reason: RevokeReason, at: OffsetDateTime) -> Vec<String> {
        let mut out = Vec::new();
        for e in self.certificates.iter_mut().filter(|e| e.subject == subject && e.revoked.is_none()) {
            e.revoked = Some(Revocation { at: at.unix_timestamp(), reason });
            out.push(e.serial.clone());
        }
        out
    }

    /// Marks the certificate `serial` revoked (it must be recorded); false if it already was.
    fn revoke_serial(&mut self, serial: &str, reason: RevokeReason, at: OffsetDateTime) -> bool {
        match self.certificates.iter_mut().find(|e| e.serial == serial) {
            Some(e) if e.revoked.is_none() => {
                e.revoked = Some(Revocation { at: at.unix_timestamp(), reason });
                true
            }
            _ => false,
        }
    }

    /// The serials revoked so far.
    pub(crate) fn revoked(&self) -> impl Iterator<Item = &Entry> {
        self.certificates.iter().filter(|e| e.revoked.is_some())
    }

    /// Increments the CRL number and returns the new CRL, signed by `ca`, as PEM.
    pub(crate) fn next_crl(&mut self, ca: &Ca, ca_not_after: OffsetDateTime) -> Result<String, PkiError> {
        self.crl_number += 1;
        let crl_err = |source| PkiError::Certificate { what: "the CRL".into(), source };
        let now = OffsetDateTime::now_utc();
        // Never before a revocation it lists, and nextUpdate strictly later (rcgen checks).
        let this_update = now.replace_nanosecond(0).unwrap_or(now);
        let next_update = if ca_not_after > this_update { ca_not_after } else { this_update + time::Duration::days(1) };
        let revoked_certs = self
            .revoked()
            .filter_map(|e| {
                let r = e.revoked?;
                Some(RevokedCertParams {
                    serial_number: SerialNumber::from(hex_bytes(&e.serial)?),
                    revocation_time: OffsetDateTime::from_unix_timestamp(r.at).unwrap_or(this_update),
                    reason_code: Some(r.reason.rcgen()),
                    invalidity_date: None,
                })
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(self.crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(ca).map_err(crl_err)?.pem().map_err(crl_err)
    }
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) || hex.len() > 40 {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

/// An exclusive lock on the PKI directory, held while the index is read, changed and written, so
/// that two `mqsftp pki` commands cannot lose each other's records. Released when dropped.
pub(crate) struct DirLock(#[allow(dead_code)] File);

impl DirLock {
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, PkiError> {
        let path = dir.join(files::LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| PkiError::io("open the lock file", &path, e))?;
        file.lock().map_err(|e| PkiError::io("lock", &path, e))?;
        Ok(DirLock(file))
    }
}

/// What [`revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeReport {
    /// Serial numbers (hex) revoked now.
    pub serials: Vec<String>,
    /// The CRL written: `DIR/crl.pem`.
    pub crl: PathBuf,
    /// Its CRL number.
    pub crl_number: u64,
}

/// Revokes every certificate issued to device `id` in the PKI in `dir` that is not revoked yet
/// (the current `devices/ID/device.crt`, and older ones the index lists), and rewrites
/// `DIR/crl.pem`, signed by the CA (whose key is decrypted with `pass` if it is encrypted).
///
/// The broker keeps using the CRL it loaded until it re-reads it: Mosquitto 2.0 does on SIGHUP
/// (it reloads its config and every listener's certificates and CRL; tested against 2.0.11) or a
/// restart. Refuses, changing nothing, when the device is unknown or all its certificates are
/// revoked already.
pub fn revoke(
    dir: &Path,
    id: &DeviceId,
    reason: RevokeReason,
    pass: Option<&Passphrase>,
) -> Result<RevokeReport, PkiError> {
    let _lock = DirLock::acquire(dir)?;
    let ca = certs::load_ca(&dir.join(files::CA_KEY), &dir.join(files::CA_CERT), pass)?;
    let mut index = Index::load(dir)?;
    let device_dir = dir.join(files::DEVICES_DIR).join(id.as_str());
    let cert = device_dir.join(device_files::CERT);
    if cert.exists() {
        let (serial, subject, not_after) = certs::cert_info(&cert)?;
        if subject != id.as_str() {
            return Err(PkiError::InvalidCert {
                path: cert,
                reason: format!("its common name is {subject:?}, not the device id {id}"),
            });
        }
        index.record_serial(&serial, &subject, not_after);
    }
    if !index.certificates.iter().any(|e| e.subject == id.as_str()) {
        return Err(PkiError::UnknownDevice { id: id.to_string(), dir: device_dir });
    }
    let serials = index.revoke_subject(id.as_str(), reason, OffsetDateTime::now_utc());
    if serials.is_empty() {
        return Err(PkiError::AlreadyRevoked(id.to_string()));
    }
    let crl = write_index_and_crl(dir, &mut index, &ca, Replacements::default())?;
    Ok(RevokeReport { serials, crl, crl_number: index.crl_number })
}

/// Revokes one certificate (re-issue: the device's previous one) in `index`, recording it first
/// if needed.
pub(crate) fn supersede(index: &mut Index, serial: &str, subject: &str, not_after: OffsetDateTime) {
    index.record_serial(serial, subject, not_after);
    index.revoke_serial(serial, RevokeReason::Superseded, OffsetDateTime::now_utc());
}

/// Stages the index and a new CRL after the files already in `staged`, and commits them all.
pub(crate) fn write_index_and_crl(
    dir: &Path,
    index: &mut Index,
    ca: &certs::LoadedCa,
    mut staged: Replacements,
) -> Result<PathBuf, PkiError> {
    let crl_pem = index.next_crl(&ca.issuer, ca.not_after)?;
    let crl = dir.join(files::CRL);
    staged.stage(dir.join(files::INDEX), index.to_json().as_bytes(), Kind::Public)?;
    staged.stage(crl.clone(), crl_pem.as_bytes(), Kind::Public)?;
    staged.commit()?;
    Ok(crl)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn reasons_parse() {
        for r in REASONS.split(", ") {
            let parsed: RevokeReason = r.parse().unwrap();
            assert_eq!(serde_json::to_string(&parsed).unwrap(), format!("\"{r}\""));
        }
        let err = "lost".parse::<RevokeReason>().unwrap_err().to_string();
        assert!(err.contains("\"lost\"") && err.contains("key-compromise"), "{err}");
    }

    #[test]
    fn hex() {
        assert_eq!(hex_bytes("00ff10"), Some(vec![0, 255, 16]));
        for bad in ["", "0", "zz", "é1", &"00".repeat(21)] {
            assert_eq!(hex_bytes(bad), None, "{bad}");
        }
    }
}
