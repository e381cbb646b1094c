//! X.509: the CA, the broker's server certificate and the client certificates of the gateway and
//! the devices. All keys are ECDSA P-256, stored as PKCS#8 PEM.

use std::path::Path;

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use pkcs8::der::zeroize::Zeroizing;

use crate::fsutil::read_to_string;
use crate::keys;
use crate::names::Host;
use crate::{Passphrase, PkiError};

/// Common name of the CA certificate.
pub const CA_COMMON_NAME: &str = "mqsftp CA";
/// Common name of the gateway's client certificate, and so its MQTT user name.
pub const GATEWAY_COMMON_NAME: &str = "gateway";

/// How long before "now" a certificate becomes valid, to allow for clocks that are a little behind.
const BACKDATE: Duration = Duration::hours(1);

/// A certificate and its private key, both PEM, with what the certificate index records.
pub(crate) struct Issued {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    /// Serial number, lower-case hex.
    pub(crate) serial: String,
    /// The certificate's CN.
    pub(crate) subject: String,
    pub(crate) not_after: OffsetDateTime,
}

/// The CA loaded from disk.
pub(crate) struct LoadedCa {
    pub(crate) issuer: Ca,
    pub(crate) cert_pem: String,
    /// End of the CA certificate's validity: the CRL's nextUpdate.
    pub(crate) not_after: OffsetDateTime,
}

/// Lower-case hex of a serial number's bytes.
pub(crate) fn serial_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The CA as a signer.
pub(crate) type Ca = Issuer<'static, KeyPair>;

fn validity(what: &'static str, days: u32) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let bad = || PkiError::InvalidLifetime { what, days };
    if days == 0 {
        return Err(bad());
    }
    let now = OffsetDateTime::now_utc();
    let not_before = now.checked_sub(BACKDATE).ok_or_else(bad)?;
    let not_after = now.checked_add(Duration::days(i64::from(days))).filter(|t| t.year() < 9999).ok_or_else(bad)?;
    Ok((not_before, not_after))
}

/// A random positive serial number of 16 bytes (RFC 5280 allows up to 20).
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).map_err(PkiError::Random)?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x40; // and no leading zero byte, so always 16 bytes long
    Ok(SerialNumber::from_slice(&bytes))
}

fn params(what: &'static str, common_name: &str, days: u32) -> Result<CertificateParams, PkiError> {
    let (not_before, not_after) = validity(what, days)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

fn new_key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate().map_err(|source| PkiError::Certificate { what: format!("the {what} key"), source })
}

/// Creates a self-signed CA (pathlen 0: it signs leaf certificates only).
pub(crate) fn new_ca(days: u32) -> Result<(Issued, Ca), PkiError> {
    let mut params = params("CA certificate", CA_COMMON_NAME, days)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = new_key("CA")?;
    let cert = params
        .self_signed(&key)
        .map_err(|source| PkiError::Certificate { what: "the CA certificate".into(), source })?;
    let issued = Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial: params.serial_number.as_ref().map(|s| serial_hex(s.as_ref())).unwrap_or_default(),
        subject: CA_COMMON_NAME.to_string(),
        not_after: params.not_after,
    };
    Ok((issued, Issuer::new(params, key)))
}

/// Creates the broker's server certificate for `hosts` (the first one is also the CN).
pub(crate) fn server_cert(ca: &Ca, hosts: &[Host], days: u32) -> Result<Issued, PkiError> {
    let cn = hosts.first().map(ToString::to_string).unwrap_or_else(|| "localhost".into());
    let mut params = params("broker certificate", &cn, days)?;
    params.subject_alt_names = hosts
        .iter()
        .map(|h| match h {
            Host::Ip(ip) => Ok(SanType::IpAddress(*ip)),
            Host::Dns(name) => name
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|source| PkiError::Certificate { what: format!("a SAN for {name}"), source }),
        })
        .collect::<Result<_, _>>()?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf(ca, params, &cn)
}

/// Creates a client certificate with `common_name` (the MQTT user name under
/// `use_identity_as_username`).
pub(crate) fn client_cert(ca: &Ca, common_name: &str, what: &'static str, days: u32) -> Result<Issued, PkiError> {
    let mut params = params(what, common_name, days)?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf(ca, params, common_name)
}

fn leaf(ca: &Ca, mut params: CertificateParams, name: &str) -> Result<Issued, PkiError> {
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let key = new_key(name)?;
    let cert = params
        .signed_by(&key, ca)
        .map_err(|source| PkiError::Certificate { what: format!("the certificate for {name}"), source })?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial: params.serial_number.as_ref().map(|s| serial_hex(s.as_ref())).unwrap_or_default(),
        subject: name.to_string(),
        not_after: params.not_after,
    })
}

/// Loads the CA from `key_path` (decrypted with `pass` when it is encrypted) and `cert_path`,
/// checking that the certificate is a CA and that the key is its key.
pub(crate) fn load_ca(key_path: &Path, cert_path: &Path, pass: Option<&Passphrase>) -> Result<LoadedCa, PkiError> {
    let key_pem = Zeroizing::new(read_to_string(key_path, PkiError::MissingCa)?);
    let cert_pem = read_to_string(cert_path, PkiError::MissingCa)?;
    let der = keys::pkcs8_der(&key_pem, pass, key_path)?;
    let key = KeyPair::try_from(der.as_slice())
        .map_err(|source| PkiError::InvalidCaKey { path: key_path.to_path_buf(), source })?;

    let bad_cert = |reason: String| PkiError::InvalidCaCert { path: cert_path.to_path_buf(), reason };
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| bad_cert(format!("not a PEM file ({e})")))?;
    let cert = pem.parse_x509().map_err(|e| bad_cert(format!("not an X.509 certificate ({e})")))?;
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| bad_cert(format!("bad basicConstraints ({e})")))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(bad_cert("it is not a CA certificate".into()));
    }
    if cert.public_key().subject_public_key.data.as_ref() != rcgen::PublicKeyData::der_bytes(&key) {
        return Err(PkiError::CaKeyMismatch { key: key_path.to_path_buf(), cert: cert_path.to_path_buf() });
    }
    let not_after = cert.validity().not_after.to_datetime();
    let issuer =
        Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| bad_cert(format!("rcgen cannot use it ({e})")))?;
    Ok(LoadedCa { issuer, cert_pem, not_after })
}

/// Serial (hex), CN and end of validity of the PEM certificate at `path`.
pub(crate) fn cert_info(path: &Path) -> Result<(String, String, OffsetDateTime), PkiError> {
    let text = std::fs::read(path).map_err(|e| PkiError::io("read", path, e))?;
    let bad = |reason: String| PkiError::InvalidCert { path: path.to_path_buf(), reason };
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).map_err(|e| bad(format!("not a PEM file ({e})")))?;
    let cert = pem.parse_x509().map_err(|e| bad(format!("not an X.509 certificate ({e})")))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| bad("it has no common name".into()))?
        .to_string();
    // DER prepends a zero byte to a serial whose top bit is set; the index keeps the number itself.
    let raw = cert.raw_serial();
    let serial = match raw.iter().position(|b| *b != 0) {
        Some(i) => &raw[i..],
        None => &raw[raw.len().saturating_sub(1)..],
    };
    Ok((serial_hex(serial), cn, cert.validity().not_after.to_datetime()))
}
