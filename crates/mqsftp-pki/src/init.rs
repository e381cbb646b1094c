//! `init`: everything the broker, the gateway and the SFTP server need, in one directory.

use std::path::PathBuf;

use crate::certs::{self, GATEWAY_COMMON_NAME};
use crate::crl::Index;
use crate::fsutil::{self, Batch, Kind};
use crate::keys;
use crate::names::{self, Host};
use crate::ssh;
use crate::templates::{self, GatewayToml, SFTP_CHROOT};
use crate::{Passphrase, PkiError};

/// Default MQTT over TLS port of the broker.
pub const DEFAULT_BROKER_PORT: u16 = 8883;
/// Default name of the SFTP account.
pub const DEFAULT_SFTP_USER: &str = "mqsftp";
/// Default lifetime of the CA certificate, in days.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Default lifetime of the broker, gateway and device certificates, in days.
pub const DEFAULT_CERT_DAYS: u32 = 825;

/// Names of the files [`init`] writes, relative to its directory.
pub mod files {
    /// CA certificate.
    pub const CA_CERT: &str = "ca.crt";
    /// CA private key.
    pub const CA_KEY: &str = "ca.key";
    /// Broker server certificate.
    pub const BROKER_CERT: &str = "broker.crt";
    /// Broker private key.
    pub const BROKER_KEY: &str = "broker.key";
    /// Gateway client certificate.
    pub const GATEWAY_CERT: &str = "gateway.crt";
    /// Gateway private key (MQTT).
    pub const GATEWAY_KEY: &str = "gateway.key";
    /// Gateway SSH private key.
    pub const GATEWAY_SSH_KEY: &str = "gateway_ed25519";
    /// Gateway SSH public key.
    pub const GATEWAY_SSH_PUB: &str = "gateway_ed25519.pub";
    /// Mosquitto configuration.
    pub const MOSQUITTO_CONF: &str = "mosquitto.conf";
    /// Mosquitto ACL file.
    pub const ACL: &str = "acl";
    /// Block to append to the SFTP server's `/etc/ssh/sshd_config`.
    pub const SSHD_CONFIG: &str = "sshd_config";
    /// The SFTP account's `authorized_keys`.
    pub const AUTHORIZED_KEYS: &str = "authorized_keys";
    /// The gateway's `known_hosts`.
    pub const KNOWN_HOSTS: &str = "known_hosts";
    /// The gateway's configuration.
    pub const GATEWAY_TOML: &str = "gateway.toml";
    /// Directory of the per-device directories.
    pub const DEVICES_DIR: &str = "devices";
    /// Certificate revocation list, signed by the CA (Mosquitto's `crlfile`).
    pub const CRL: &str = "crl.pem";
    /// Index of every certificate issued, and which are revoked.
    pub const INDEX: &str = "issued.json";
    /// Lock file taken while the index changes.
    pub const LOCK: &str = ".lock";
}

/// What [`init`] creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// Directory to write to; created (mode 0700) if missing.
    pub dir: PathBuf,
    /// Extra names of the broker (DNS names or IP literals) for its certificate. `localhost`,
    /// `127.0.0.1` and `::1` are always added. The first one, or `localhost`, is the certificate's
    /// CN and the host in `gateway.toml`.
    pub broker_hosts: Vec<String>,
    /// Port of the broker's TLS listener, in `mosquitto.conf` and `gateway.toml`.
    pub broker_port: u16,
    /// SFTP account of the gateway.
    pub sftp_user: String,
    /// Host of the SFTP server, in `gateway.toml` and `known_hosts`.
    pub sftp_host: String,
    /// Port of the SFTP server.
    pub sftp_port: u16,
    /// The SFTP server's public host key file (e.g. `/etc/ssh/ssh_host_ed25519_key.pub`). When
    /// given, `known_hosts` lists it; otherwise `known_hosts` only explains how to fill it in.
    pub sftp_host_key: Option<PathBuf>,
    /// Lifetime of the CA certificate, in days.
    pub ca_days: u32,
    /// Lifetime of the broker and gateway certificates, in days.
    pub cert_days: u32,
    /// Encrypts `ca.key` with this passphrase. Later commands that sign (`issue_device`,
    /// `revoke`) then need it too.
    pub passphrase: Option<Passphrase>,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("."),
            broker_hosts: Vec::new(),
            broker_port: DEFAULT_BROKER_PORT,
            sftp_user: DEFAULT_SFTP_USER.to_string(),
            sftp_host: "localhost".to_string(),
            sftp_port: 22,
            sftp_host_key: None,
            ca_days: DEFAULT_CA_DAYS,
            cert_days: DEFAULT_CERT_DAYS,
            passphrase: None,
        }
    }
}

/// What [`init`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// The files written, in `opts.dir` (as given), in the order written.
    pub written: Vec<PathBuf>,
    /// `opts.dir` made absolute: the directory `mosquitto.conf` refers to.
    pub dir: PathBuf,
}

/// The files [`init`] writes, keys first: the order in which clashes are reported.
const OUTPUTS: &[(&str, Kind)] = &[
    (files::CA_KEY, Kind::Secret),
    (files::BROKER_KEY, Kind::Secret),
    (files::GATEWAY_KEY, Kind::Secret),
    (files::GATEWAY_SSH_KEY, Kind::Secret),
    (files::CA_CERT, Kind::Public),
    (files::BROKER_CERT, Kind::Public),
    (files::GATEWAY_CERT, Kind::Public),
    (files::GATEWAY_SSH_PUB, Kind::Public),
    (files::MOSQUITTO_CONF, Kind::Public),
    (files::ACL, Kind::Public),
    (files::SSHD_CONFIG, Kind::Public),
    (files::AUTHORIZED_KEYS, Kind::Public),
    (files::KNOWN_HOSTS, Kind::Public),
    (files::GATEWAY_TOML, Kind::Public),
    (files::CRL, Kind::Public),
    (files::INDEX, Kind::Public),
];

/// The broker's certificate names: the extra hosts first (the first is the CN), then
/// `localhost`, `127.0.0.1`, `::1`, without duplicates.
fn broker_sans(extra: &[String]) -> Result<Vec<Host>, PkiError> {
    let mut hosts: Vec<Host> = Vec::new();
    let always = ["localhost", "127.0.0.1", "::1"];
    for h in extra.iter().map(String::as_str).chain(always) {
        let host = Host::parse(h)?;
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    Ok(hosts)
}

/// Creates the CA, the broker and gateway certificates, the gateway's SSH key, and the config
/// files of Mosquitto, sshd and the gateway, in `opts.dir` (see the crate docs for the list).
///
/// All or nothing: nothing is written when any of the files already exists (the error names the
/// first one found, keys first) or when an option is invalid, and a failure part-way removes what
/// this call wrote.
pub fn init(opts: &InitOptions) -> Result<InitReport, PkiError> {
    // Validate everything before touching the file system.
    let sans = broker_sans(&opts.broker_hosts)?;
    let broker_host = match opts.broker_hosts.first() {
        Some(h) => Host::parse(h)?,
        None => Host::Dns("localhost".into()),
    };
    names::validate_user(&opts.sftp_user)?;
    if opts.cert_days > opts.ca_days {
        return Err(PkiError::LifetimeBeyondCa {
            what: "broker and gateway certificate",
            days: opts.cert_days,
            ca_until: format!("{} days from now", opts.ca_days),
        });
    }
    let sftp_host = Host::parse(&opts.sftp_host)?;
    for (name, kind) in OUTPUTS {
        fsutil::ensure_absent(&opts.dir.join(name), *kind)?;
    }
    let known_hosts = match &opts.sftp_host_key {
        Some(key_file) => format!(
            "# The SFTP server's host key ({}).\n{}\n",
            key_file.display(),
            ssh::known_hosts_line_from_file(&opts.sftp_host, opts.sftp_port, key_file)?
        ),
        None => templates::known_hosts_placeholder(&sftp_host, opts.sftp_port),
    };

    // Generate in memory.
    let (ca, issuer) = certs::new_ca(opts.ca_days)?;
    let broker = certs::server_cert(&issuer, &sans, opts.cert_days)?;
    let gateway = certs::client_cert(&issuer, GATEWAY_COMMON_NAME, "gateway certificate", opts.cert_days)?;
    let mut index = Index::default();
    index.record(&broker);
    index.record(&gateway);
    let crl = index.next_crl(&issuer, ca.not_after)?;
    let ca_key = match &opts.passphrase {
        Some(pass) => keys::encrypt_pkcs8_pem(&ca.key_pem, pass, &opts.dir.join(files::CA_KEY))?,
        None => ca.key_pem,
    };
    let ssh_key_path = opts.dir.join(files::GATEWAY_SSH_KEY);
    let ssh_key = ssh::new_ssh_key(&ssh_key_path, "mqsftp-gateway")?;

    let created = fsutil::create_dir_all(&opts.dir)?;
    let mut batch = Batch::new(created);
    let abs_dir = opts.dir.canonicalize().map_err(|e| PkiError::io("resolve", &opts.dir, e))?;
    let conf_dir = templates::config_path(&abs_dir, files::MOSQUITTO_CONF)?;
    let gateway_toml = templates::gateway_toml(&GatewayToml {
        broker_host: &broker_host,
        broker_port: opts.broker_port,
        sftp_host: &sftp_host,
        sftp_port: opts.sftp_port,
        sftp_user: &opts.sftp_user,
    });

    let outputs: [(&str, String, Kind); 16] = [
        (files::CA_KEY, ca_key, Kind::Secret),
        (files::CA_CERT, ca.cert_pem, Kind::Public),
        (files::BROKER_KEY, broker.key_pem, Kind::Secret),
        (files::BROKER_CERT, broker.cert_pem, Kind::Public),
        (files::GATEWAY_KEY, gateway.key_pem, Kind::Secret),
        (files::GATEWAY_CERT, gateway.cert_pem, Kind::Public),
        (files::GATEWAY_SSH_KEY, ssh_key.private_openssh, Kind::Secret),
        (files::GATEWAY_SSH_PUB, format!("{}\n", ssh_key.public_line), Kind::Public),
        (files::MOSQUITTO_CONF, templates::mosquitto_conf(&conf_dir, opts.broker_port), Kind::Public),
        (files::ACL, templates::acl(), Kind::Public),
        (files::SSHD_CONFIG, templates::sshd_config_snippet(&opts.sftp_user, SFTP_CHROOT), Kind::Public),
        (files::AUTHORIZED_KEYS, format!("{}\n", ssh::authorized_keys_line(&ssh_key.public_line)), Kind::Public),
        (files::KNOWN_HOSTS, known_hosts, Kind::Public),
        (files::GATEWAY_TOML, gateway_toml, Kind::Public),
        (files::CRL, crl, Kind::Public),
        (files::INDEX, index.to_json(), Kind::Public),
    ];
    for (name, contents, kind) in outputs {
        batch.write(opts.dir.join(name), contents.as_bytes(), kind)?;
    }
    batch.create_dir(&opts.dir.join(files::DEVICES_DIR))?;
    Ok(InitReport { written: batch.commit(), dir: abs_dir })
}
