//! Tests of `init` and `issue_device` through the public API; `servers` runs the generated
//! configs through the real Mosquitto and sshd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod servers;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::pem::Pem;

use crate::*;

/// Every file `init` writes, with its expected mode.
const INIT_FILES: &[(&str, u32)] = &[
    ("ca.crt", 0o644),
    ("ca.key", 0o600),
    ("broker.crt", 0o644),
    ("broker.key", 0o600),
    ("gateway.crt", 0o644),
    ("gateway.key", 0o600),
    ("gateway_ed25519", 0o600),
    ("gateway_ed25519.pub", 0o644),
    ("mosquitto.conf", 0o644),
    ("acl", 0o644),
    ("sshd_config", 0o644),
    ("authorized_keys", 0o644),
    ("known_hosts", 0o644),
    ("gateway.toml", 0o644),
    ("crl.pem", 0o644),
    ("issued.json", 0o644),
];

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Options for a PKI in `dir` with two extra broker names.
fn options(dir: &Path) -> InitOptions {
    InitOptions {
        dir: dir.to_path_buf(),
        broker_hosts: vec!["mqtt.example.com".into(), "10.1.2.3".into()],
        sftp_host: "sftp.example.com".into(),
        sftp_port: 2222,
        ..InitOptions::default()
    }
}

/// A fresh PKI in a temporary directory; returns (tempdir guard, pki dir).
fn fresh_pki() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    init(&options(&dir)).unwrap();
    (tmp, dir)
}

/// Name → (contents, mtime) of every entry below `dir`, recursively.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime, u32)> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        let contents = if meta.is_dir() {
            out.extend(snapshot(&entry.path()));
            Vec::new()
        } else {
            std::fs::read(entry.path()).unwrap()
        };
        out.insert(entry.path(), (contents, meta.modified().unwrap(), meta.permissions().mode()));
    }
    out
}

fn read_pem(path: &Path) -> Pem {
    let text = std::fs::read(path).unwrap();
    let (rest, pem) = x509_parser::pem::parse_x509_pem(&text).unwrap();
    assert!(rest.iter().all(u8::is_ascii_whitespace), "one PEM block in {}", path.display());
    pem
}

fn common_name<'a>(cert: &'a X509Certificate<'_>) -> &'a str {
    cert.subject().iter_common_name().next().unwrap().as_str().unwrap()
}

fn key_ids(cert: &X509Certificate<'_>) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let (mut ski, mut aki) = (None, None);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => ski = Some(id.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(a) => aki = a.key_identifier.as_ref().map(|id| id.0.to_vec()),
            _ => {}
        }
    }
    (ski, aki)
}

/// Asserts `leaf` is a non-CA certificate issued and signed by `ca`.
fn assert_signed_by(leaf: &X509Certificate<'_>, ca: &X509Certificate<'_>) {
    assert_eq!(leaf.issuer(), ca.subject());
    leaf.verify_signature(Some(ca.public_key())).expect("signature verifies with the CA key");
    assert_eq!(key_ids(leaf).1, key_ids(ca).0, "AKI of the leaf = SKI of the CA");
    assert!(!leaf.is_ca());
    assert!(leaf.validity().is_valid());
}

#[test]
fn init_writes_all_files_with_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a").join("pki");
    let report = init(&options(&dir)).unwrap();

    let expected: Vec<PathBuf> = INIT_FILES.iter().map(|(n, _)| dir.join(n)).collect();
    let mut written = report.written.clone();
    written.sort();
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(written, sorted);
    for (name, want) in INIT_FILES {
        assert_eq!(mode(&dir.join(name)), *want, "{name}");
    }
    assert_eq!(mode(&dir), 0o700);
    assert!(dir.join("devices").is_dir());
    assert_eq!(report.dir, dir.canonicalize().unwrap());
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), INIT_FILES.len() + 1, "no temporary files left: {names:?}");
}

#[test]
fn second_init_refuses_and_changes_nothing() {
    let (_tmp, dir) = fresh_pki();
    let before = snapshot(&dir);

    let err = init(&options(&dir)).unwrap_err();
    assert!(matches!(&err, PkiError::ExistingKey(p) if p == &dir.join("ca.key")), "{err:?}");
    assert_eq!(err.to_string(), format!("refusing to replace existing key {}", dir.join("ca.key").display()));
    assert_eq!(snapshot(&dir), before);

    // Any one leftover key is enough to refuse, and is named.
    for key in ["ca.key", "broker.key", "gateway.key"] {
        std::fs::remove_file(dir.join(key)).unwrap();
    }
    let before = snapshot(&dir);
    let err = init(&options(&dir)).unwrap_err();
    assert!(matches!(&err, PkiError::ExistingKey(p) if p == &dir.join("gateway_ed25519")), "{err:?}");
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn init_refuses_to_replace_a_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    std::fs::write(dir.join("gateway.toml"), "# mine\n").unwrap();
    let err = init(&options(&dir)).unwrap_err();
    assert!(matches!(&err, PkiError::ExistingFile(p) if p == &dir.join("gateway.toml")), "{err:?}");
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["gateway.toml"]);
}

#[test]
fn init_rejects_bad_options_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let cases: Vec<(InitOptions, &str)> = vec![
        (InitOptions { broker_hosts: vec!["*.example.com".into()], ..options(&dir) }, "\"*.example.com\""),
        (InitOptions { sftp_host: "a b".into(), ..options(&dir) }, "\"a b\""),
        (InitOptions { sftp_user: "x y".into(), ..options(&dir) }, "\"x y\""),
        (InitOptions { cert_days: 0, ..options(&dir) }, "0 days"),
        (InitOptions { ca_days: u32::MAX, cert_days: 10, ..options(&dir) }, "4294967295 days"),
        (InitOptions { ca_days: 30, cert_days: 31, ..options(&dir) }, "31 days outlasts the CA"),
        (InitOptions { sftp_host_key: Some(tmp.path().join("missing.pub")), ..options(&dir) }, "missing.pub"),
    ];
    for (opts, needle) in cases {
        let err = init(&opts).unwrap_err().to_string();
        assert!(err.contains(needle), "{err:?} should contain {needle:?}");
        assert!(!dir.exists(), "nothing written for {needle}");
    }
}

#[test]
fn ca_and_broker_and_gateway_certificates() {
    let (_tmp, dir) = fresh_pki();
    let ca_pem = read_pem(&dir.join("ca.crt"));
    let ca = ca_pem.parse_x509().unwrap();
    assert_eq!(common_name(&ca), "mqsftp CA");
    assert!(ca.is_ca());
    assert_eq!(ca.issuer(), ca.subject());
    ca.verify_signature(None).unwrap();
    let ku = ca.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    let days = (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp()) / 86400;
    assert_eq!(days, 3650, "1 hour backdating rounds down");

    let broker_pem = read_pem(&dir.join("broker.crt"));
    let broker = broker_pem.parse_x509().unwrap();
    assert_eq!(common_name(&broker), "mqtt.example.com");
    assert_signed_by(&broker, &ca);
    let sans = broker.subject_alternative_name().unwrap().unwrap();
    let sans: Vec<String> = sans
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("dns:{d}"),
            GeneralName::IPAddress(b) => {
                let ip: std::net::IpAddr = match b.len() {
                    4 => <[u8; 4]>::try_from(*b).unwrap().into(),
                    _ => <[u8; 16]>::try_from(*b).unwrap().into(),
                };
                format!("ip:{ip}")
            }
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect();
    assert_eq!(sans, ["dns:mqtt.example.com", "ip:10.1.2.3", "dns:localhost", "ip:127.0.0.1", "ip:::1"]);
    let eku = broker.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);

    let gateway_pem = read_pem(&dir.join("gateway.crt"));
    let gateway = gateway_pem.parse_x509().unwrap();
    assert_eq!(common_name(&gateway), "gateway");
    assert_signed_by(&gateway, &ca);
    let eku = gateway.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert_ne!(gateway.raw_serial(), broker.raw_serial());

    // Each key file holds the key of its certificate.
    for (cert, key) in [(&ca, "ca.key"), (&broker, "broker.key"), (&gateway, "gateway.key")] {
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join(key)).unwrap()).unwrap();
        assert_eq!(cert.public_key().subject_public_key.data.as_ref(), rcgen::PublicKeyData::der_bytes(&key));
    }
}

#[test]
fn default_broker_names_without_extra_hosts() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = InitOptions { dir: tmp.path().to_path_buf(), ..InitOptions::default() };
    init(&opts).unwrap();
    let pem = read_pem(&tmp.path().join("broker.crt"));
    let broker = pem.parse_x509().unwrap();
    assert_eq!(common_name(&broker), "localhost");
    assert_eq!(broker.subject_alternative_name().unwrap().unwrap().value.general_names.len(), 3);
    let toml: toml::Table = std::fs::read_to_string(tmp.path().join("gateway.toml")).unwrap().parse().unwrap();
    assert_eq!(toml["broker"]["host"].as_str(), Some("localhost"));
    assert_eq!(toml["broker"]["port"].as_integer(), Some(8883));
    assert_eq!(toml["sftp"]["port"].as_integer(), Some(22));
    assert_eq!(toml["sftp"]["user"].as_str(), Some("mqsftp"));
}

#[test]
fn gateway_toml_matches_the_documented_format() {
    let (_tmp, dir) = fresh_pki();
    let text = std::fs::read_to_string(dir.join("gateway.toml")).unwrap();
    let toml: toml::Table = text.parse().unwrap();
    let expected: toml::Table = r#"
        [broker]
        host = "mqtt.example.com"
        port = 8883
        ca = "ca.crt"
        cert = "gateway.crt"
        key = "gateway.key"
        client_id = "mqsftp-gateway"
        keep_alive = "30s"
        [sftp]
        host = "sftp.example.com"
        port = 2222
        user = "mqsftp"
        key = "gateway_ed25519"
        known_hosts = "known_hosts"
        [store]
        device_root = "devices/{device}"
        [transfer]
        chunk_size = 261120
        window = 8
        shared_window = 32
        broker_window = 4
        [runtime]
        threads = 1
    "#
    .parse()
    .unwrap();
    assert_eq!(toml, expected);
    // Every path in it names a file init wrote.
    for (section, key) in
        [("broker", "ca"), ("broker", "cert"), ("broker", "key"), ("sftp", "key"), ("sftp", "known_hosts")]
    {
        assert!(dir.join(toml[section][key].as_str().unwrap()).is_file(), "{section}.{key}");
    }
}

#[test]
fn ssh_files_fit_together() {
    let (_tmp, dir) = fresh_pki();
    let public = std::fs::read_to_string(dir.join("gateway_ed25519.pub")).unwrap();
    let private = russh::keys::PrivateKey::read_openssh_file(dir.join("gateway_ed25519")).unwrap();
    assert_eq!(format!("{}\n", private.public_key().to_openssh().unwrap()), public);
    assert_eq!(std::fs::read_to_string(dir.join("authorized_keys")).unwrap(), format!("restrict {public}"));

    // Without a host key, known_hosts has comments only (the gateway then refuses every server).
    let known = std::fs::read_to_string(dir.join("known_hosts")).unwrap();
    assert!(known.lines().all(|l| l.starts_with('#')), "{known}");
    assert!(known.contains("ssh-keyscan -p 2222 -t ed25519 sftp.example.com"), "{known}");
    assert!(known.contains("mqsftp pki known-hosts --host sftp.example.com --port 2222"), "{known}");

    let sshd = std::fs::read_to_string(dir.join("sshd_config")).unwrap();
    assert_eq!(sshd, sshd_config_snippet("mqsftp", "/srv/mqsftp"));
    for line in [
        "Match User mqsftp",
        "    ForceCommand internal-sftp -d /",
        "    ChrootDirectory /srv/mqsftp",
        "    AuthenticationMethods publickey",
        "    PasswordAuthentication no",
        "    DisableForwarding yes",
        "    PermitTTY no",
    ] {
        assert!(sshd.lines().any(|l| l == line), "{line:?} in\n{sshd}");
    }
}

#[test]
fn known_hosts_lists_the_given_host_key() {
    let tmp = tempfile::tempdir().unwrap();
    let host_key = tmp.path().join("ssh_host_ed25519_key");
    let host_pub = generate_ssh_key(&host_key, "root@sftp").unwrap();
    let dir = tmp.path().join("pki");
    init(&InitOptions { sftp_host_key: Some(public_key_path(&host_key)), ..options(&dir) }).unwrap();

    let known = std::fs::read_to_string(dir.join("known_hosts")).unwrap();
    let entries: Vec<&str> = known.lines().filter(|l| !l.starts_with('#')).collect();
    let base64 = host_pub.split_whitespace().nth(1).unwrap();
    assert_eq!(entries, [format!("[sftp.example.com]:2222 ssh-ed25519 {base64}")]);
    // A key as the server sends it: no comment (russh's comparison includes the comment).
    let mut key = russh::keys::PublicKey::from_openssh(&host_pub).unwrap();
    key.set_comment("");
    assert!(russh::keys::check_known_hosts_path("sftp.example.com", 2222, &key, dir.join("known_hosts")).unwrap());
}

#[test]
fn mosquitto_conf_and_acl_contents() {
    let (_tmp, dir) = fresh_pki();
    let abs = dir.canonicalize().unwrap();
    let conf = std::fs::read_to_string(dir.join("mosquitto.conf")).unwrap();
    let settings: Vec<&str> = conf.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let abs = abs.display();
    assert_eq!(
        settings,
        [
            "per_listener_settings false".to_string(),
            "set_tcp_nodelay true".to_string(),
            "allow_anonymous false".into(),
            format!("acl_file {abs}/acl"),
            "listener 8883".into(),
            format!("cafile {abs}/ca.crt"),
            format!("certfile {abs}/broker.crt"),
            format!("keyfile {abs}/broker.key"),
            "require_certificate true".into(),
            "use_identity_as_username true".into(),
            format!("crlfile {abs}/crl.pem"),
            "tls_version tlsv1.2".into(),
            "ciphers_tls1.3 TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256".into(),
            "max_packet_size 1049600".into(),
        ]
    );
    let acl = std::fs::read_to_string(dir.join("acl")).unwrap();
    let rules: Vec<&str> = acl.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert_eq!(
        rules,
        [
            "pattern write mqsftp/v1/%u/req/#",
            "pattern write mqsftp/v1/%u/up/#",
            "pattern read mqsftp/v1/%u/res/#",
            "pattern read mqsftp/v1/%u/down/#",
            "user gateway",
            "topic readwrite mqsftp/v1/#",
        ]
    );
}

#[test]
fn issue_device_writes_a_signed_certificate_and_config() {
    let (_tmp, dir) = fresh_pki();
    let id = parse_device_id("sensor-7").unwrap();
    let opts = DeviceOptions {
        broker_host: "mqtt.example.com".into(),
        broker_port: 18883,
        cert_days: 30,
        ..DeviceOptions::default()
    };
    let files = issue_device(&dir, &id, &opts).unwrap();

    let dev_dir = dir.join("devices").join("sensor-7");
    assert_eq!(
        files,
        DeviceFiles {
            dir: dev_dir.clone(),
            config: dev_dir.join("device.toml"),
            cert: dev_dir.join("device.crt"),
            key: dev_dir.join("device.key"),
            ca: dev_dir.join("ca.crt"),
        }
    );
    assert_eq!(mode(&dev_dir), 0o700);
    assert_eq!(mode(&files.key), 0o600);
    assert_eq!(mode(&files.cert), 0o644);
    assert_eq!(mode(&files.config), 0o644);
    assert_eq!(std::fs::read(&files.ca).unwrap(), std::fs::read(dir.join("ca.crt")).unwrap());

    let ca_pem = read_pem(&dir.join("ca.crt"));
    let ca = ca_pem.parse_x509().unwrap();
    let dev_pem = read_pem(&files.cert);
    let dev = dev_pem.parse_x509().unwrap();
    assert_eq!(common_name(&dev), "sensor-7");
    assert_signed_by(&dev, &ca);
    let eku = dev.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    let days = (dev.validity().not_after.timestamp() - dev.validity().not_before.timestamp()) / 86400;
    assert_eq!(days, 30);
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&files.key).unwrap()).unwrap();
    assert_eq!(dev.public_key().subject_public_key.data.as_ref(), rcgen::PublicKeyData::der_bytes(&key));

    let toml: toml::Table = std::fs::read_to_string(&files.config).unwrap().parse().unwrap();
    let expected: toml::Table = r#"
        device_id = "sensor-7"
        [broker]
        host = "mqtt.example.com"
        port = 18883
        ca = "ca.crt"
        cert = "device.crt"
        key = "device.key"
        keep_alive = "30s"
        [transfer]
        timeout = "15s"
        hash = "blake3"
    "#
    .parse()
    .unwrap();
    assert_eq!(toml, expected);

    // A second device gets its own key and serial.
    let other = issue_device(&dir, &parse_device_id("sensor-8").unwrap(), &DeviceOptions::default()).unwrap();
    let other_pem = read_pem(&other.cert);
    let other = other_pem.parse_x509().unwrap();
    assert_ne!(other.raw_serial(), dev.raw_serial());
    assert_ne!(other.public_key().raw, dev.public_key().raw);
}

#[test]
fn issue_device_refuses_an_existing_device() {
    let (_tmp, dir) = fresh_pki();
    let id = parse_device_id("d1").unwrap();
    issue_device(&dir, &id, &DeviceOptions::default()).unwrap();
    let before = snapshot(&dir);
    let err = issue_device(&dir, &id, &DeviceOptions::default()).unwrap_err();
    let key = dir.join("devices/d1/device.key");
    assert!(matches!(&err, PkiError::ExistingKey(p) if p == &key), "{err:?}");
    assert_eq!(err.to_string(), format!("refusing to replace existing key {}", key.display()));
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn bad_device_ids_are_named() {
    for bad in ["a/b", "gateway", "", "../x", "+"] {
        let err = parse_device_id(bad).unwrap_err();
        assert!(matches!(err, PkiError::DeviceId(_)));
        assert!(err.to_string().contains(&format!("{bad:?}")) || bad.is_empty(), "{err}");
    }
}

#[test]
fn issue_device_needs_the_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let id = parse_device_id("d1").unwrap();
    let err = issue_device(tmp.path(), &id, &DeviceOptions::default()).unwrap_err();
    assert!(matches!(&err, PkiError::MissingCa(p) if p == &tmp.path().join("ca.key")), "{err:?}");
    assert!(err.to_string().contains(&tmp.path().join("ca.key").display().to_string()), "{err}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "nothing written");

    // ca.key present but ca.crt missing: that one is named.
    let (_tmp, dir) = fresh_pki();
    std::fs::remove_file(dir.join("ca.crt")).unwrap();
    let err = issue_device(&dir, &id, &DeviceOptions::default()).unwrap_err();
    assert!(matches!(&err, PkiError::MissingCa(p) if p == &dir.join("ca.crt")), "{err:?}");
    assert!(!dir.join("devices/d1").exists());
}

#[test]
fn issue_device_checks_the_ca_key_belongs_to_the_ca() {
    let (_tmp, dir) = fresh_pki();
    // Swap in another key: a certificate signed with it would not verify against ca.crt.
    std::fs::remove_file(dir.join("ca.key")).unwrap();
    std::fs::copy(dir.join("broker.key"), dir.join("ca.key")).unwrap();
    let err = issue_device(&dir, &parse_device_id("d1").unwrap(), &DeviceOptions::default()).unwrap_err();
    assert!(matches!(err, PkiError::CaKeyMismatch { .. }), "{err:?}");

    // A leaf certificate is not a CA.
    std::fs::remove_file(dir.join("ca.crt")).unwrap();
    std::fs::copy(dir.join("broker.crt"), dir.join("ca.crt")).unwrap();
    let err = issue_device(&dir, &parse_device_id("d1").unwrap(), &DeviceOptions::default()).unwrap_err();
    assert!(err.to_string().contains("not a CA certificate"), "{err}");
    assert!(!dir.join("devices/d1").exists());
}

#[test]
fn issue_device_rejects_a_bad_broker_host() {
    let (_tmp, dir) = fresh_pki();
    let opts = DeviceOptions { broker_host: "bad host".into(), ..DeviceOptions::default() };
    let err = issue_device(&dir, &parse_device_id("d1").unwrap(), &opts).unwrap_err();
    assert!(err.to_string().contains("\"bad host\""), "{err}");
}

/// (CRL number, revoked serials as hex, nextUpdate) of `dir/crl.pem`, after checking that the CA
/// signed it.
fn read_crl(dir: &Path) -> (u64, Vec<String>, i64) {
    let ca_pem = read_pem(&dir.join("ca.crt"));
    let ca = ca_pem.parse_x509().unwrap();
    let pem = read_pem(&dir.join("crl.pem"));
    assert_eq!(pem.label, "X509 CRL");
    let (_, crl) = x509_parser::parse_x509_crl(&pem.contents).unwrap();
    crl.verify_signature(ca.public_key()).expect("the CA signed the CRL");
    assert_eq!(crl.issuer(), ca.subject());
    let number: u64 = crl.crl_number().unwrap().try_into().unwrap();
    let serials = crl.iter_revoked_certificates().map(|r| crate::certs::serial_hex(r.raw_serial())).collect();
    (number, serials, crl.next_update().unwrap().timestamp())
}

fn serial_of(path: &Path) -> String {
    crate::certs::cert_info(path).unwrap().0
}

#[test]
fn init_writes_an_empty_crl_and_records_its_certificates() {
    let (_tmp, dir) = fresh_pki();
    let (number, revoked, next_update) = read_crl(&dir);
    assert_eq!((number, revoked), (1, Vec::<String>::new()));
    let ca_pem = read_pem(&dir.join("ca.crt"));
    assert_eq!(next_update, ca_pem.parse_x509().unwrap().validity().not_after.timestamp(), "nextUpdate = CA expiry");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("issued.json")).unwrap()).unwrap();
    let subjects: Vec<&str> =
        index["certificates"].as_array().unwrap().iter().map(|e| e["subject"].as_str().unwrap()).collect();
    assert_eq!(subjects, ["mqtt.example.com", "gateway"]);
    assert_eq!(index["certificates"][1]["serial"].as_str().unwrap(), serial_of(&dir.join("gateway.crt")));
}

#[test]
fn revoke_lists_every_certificate_of_the_device_and_only_those() {
    let (_tmp, dir) = fresh_pki();
    let (d1, d2) = (parse_device_id("d1").unwrap(), parse_device_id("d2").unwrap());
    issue_device(&dir, &d1, &DeviceOptions::default()).unwrap();
    issue_device(&dir, &d2, &DeviceOptions::default()).unwrap();
    let first = serial_of(&dir.join("devices/d1/device.crt"));
    issue_device(&dir, &d1, &DeviceOptions { reissue: true, ..DeviceOptions::default() }).unwrap();
    let second = serial_of(&dir.join("devices/d1/device.crt"));
    assert_ne!(first, second);
    assert_eq!(read_crl(&dir).0, 2);
    assert_eq!(read_crl(&dir).1, std::slice::from_ref(&first), "re-issue revoked the old certificate");

    let report = revoke(&dir, &d1, RevokeReason::KeyCompromise, None).unwrap();
    assert_eq!(report.serials, std::slice::from_ref(&second));
    assert_eq!(report.crl, dir.join("crl.pem"));
    let (number, mut revoked, _) = read_crl(&dir);
    revoked.sort();
    let mut want = vec![first, second];
    want.sort();
    assert_eq!((number, revoked), (3, want));

    // Again: nothing left to revoke, nothing changes.
    let before = snapshot(&dir);
    let err = revoke(&dir, &d1, RevokeReason::KeyCompromise, None).unwrap_err();
    assert_eq!(err.to_string(), "every certificate of device d1 is already revoked");
    let unknown = revoke(&dir, &parse_device_id("nobody").unwrap(), RevokeReason::Unspecified, None).unwrap_err();
    assert!(unknown.to_string().contains("device nobody has no certificate"), "{unknown}");
    assert_eq!(snapshot(&dir), before);
    // d2 is untouched.
    assert!(!read_crl(&dir).1.contains(&serial_of(&dir.join("devices/d2/device.crt"))));
}

#[test]
fn reissue_replaces_key_and_certificate_and_needs_an_existing_device() {
    let (_tmp, dir) = fresh_pki();
    let id = parse_device_id("d1").unwrap();
    let opts = DeviceOptions { reissue: true, ..DeviceOptions::default() };
    let err = issue_device(&dir, &id, &opts).unwrap_err();
    assert!(matches!(err, PkiError::NothingToReissue { .. }), "{err:?}");
    assert!(!dir.join("devices/d1").exists());

    let files = issue_device(&dir, &id, &DeviceOptions::default()).unwrap();
    let (key, config) = (std::fs::read(&files.key).unwrap(), std::fs::read(&files.config).unwrap());
    issue_device(&dir, &id, &opts).unwrap();
    assert_ne!(std::fs::read(&files.key).unwrap(), key, "new key");
    assert_eq!(std::fs::read(&files.config).unwrap(), config, "device.toml kept");
    assert_eq!(mode(&files.key), 0o600);
    let ca_pem = read_pem(&dir.join("ca.crt"));
    let cert_pem = read_pem(&files.cert);
    assert_signed_by(&cert_pem.parse_x509().unwrap(), &ca_pem.parse_x509().unwrap());
    let new_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&files.key).unwrap()).unwrap();
    assert_eq!(
        cert_pem.parse_x509().unwrap().public_key().subject_public_key.data.as_ref(),
        rcgen::PublicKeyData::der_bytes(&new_key)
    );
    let names: Vec<_> = std::fs::read_dir(&files.dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 4, "no temporary files or backups left: {names:?}");
}

#[test]
fn encrypted_ca_key_needs_its_passphrase() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let pass = Passphrase::new("correct horse", "test").unwrap();
    init(&InitOptions { passphrase: Some(pass.clone()), ..options(&dir) }).unwrap();
    let key_text = std::fs::read_to_string(dir.join("ca.key")).unwrap();
    assert!(key_text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"), "{key_text}");
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    // The other keys are not encrypted (Mosquitto cannot be given a passphrase).
    assert!(std::fs::read_to_string(dir.join("broker.key")).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));

    let id = parse_device_id("d1").unwrap();
    let before = snapshot(&dir);
    let err = issue_device(&dir, &id, &DeviceOptions::default()).unwrap_err();
    assert!(matches!(&err, PkiError::EncryptedKey(p) if p == &dir.join("ca.key")), "{err:?}");
    assert!(err.to_string().contains("MQSFTP_PKI_PASSPHRASE"), "{err}");
    let wrong = Passphrase::new("battery staple", "test").unwrap();
    let err = issue_device(&dir, &id, &DeviceOptions { passphrase: Some(wrong.clone()), ..DeviceOptions::default() })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("wrong passphrase for {} (or the key file is damaged)", dir.join("ca.key").display())
    );
    assert!(revoke(&dir, &id, RevokeReason::Unspecified, Some(&wrong)).is_err());
    // Only the lock file may have appeared.
    let mut after = snapshot(&dir);
    after.remove(&dir.join(".lock"));
    assert_eq!(after, before);

    let files =
        issue_device(&dir, &id, &DeviceOptions { passphrase: Some(pass.clone()), ..DeviceOptions::default() }).unwrap();
    let ca_pem = read_pem(&dir.join("ca.crt"));
    let cert_pem = read_pem(&files.cert);
    assert_signed_by(&cert_pem.parse_x509().unwrap(), &ca_pem.parse_x509().unwrap());
    revoke(&dir, &id, RevokeReason::Unspecified, Some(&pass)).unwrap();
    assert_eq!(read_crl(&dir).1, [serial_of(&files.cert)]);
}

#[test]
fn damaged_index_is_named_and_nothing_changes() {
    let (_tmp, dir) = fresh_pki();
    std::fs::write(dir.join("issued.json"), "{\"crl_number\": 1, \"certificates\": [{\"serial\": \"xyz\"").unwrap();
    let before = snapshot(&dir);
    let err = issue_device(&dir, &parse_device_id("d1").unwrap(), &DeviceOptions::default()).unwrap_err();
    assert!(err.to_string().starts_with(&format!("certificate index {}", dir.join("issued.json").display())), "{err}");
    let mut after = snapshot(&dir);
    after.remove(&dir.join(".lock"));
    assert_eq!(after, before);
}

#[test]
fn device_lifetimes_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    init(&InitOptions { ca_days: 30, cert_days: 10, ..options(&dir) }).unwrap();
    let id = parse_device_id("d1").unwrap();
    for (days, needle) in [(0, "0 days"), (31, "31 days outlasts the CA"), (u32::MAX, "4294967295 days")] {
        let err = issue_device(&dir, &id, &DeviceOptions { cert_days: days, ..DeviceOptions::default() }).unwrap_err();
        assert!(err.to_string().contains(needle), "{days}: {err}");
        assert!(!dir.join("devices/d1").exists());
    }
    let files = issue_device(&dir, &id, &DeviceOptions { cert_days: 2, ..DeviceOptions::default() }).unwrap();
    let pem = read_pem(&files.cert);
    let cert = pem.parse_x509().unwrap();
    let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86400;
    assert_eq!(days, 2);
}
