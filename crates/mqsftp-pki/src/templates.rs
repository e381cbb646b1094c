//! The text of the generated config files. Formats: `docs/dev/config-formats.md`.

use std::path::Path;

use crate::names::{toml_string, Host};
use crate::PkiError;

/// Topic prefix of every mqsftp topic, as in `mqsftp_proto`.
const TOPIC_PREFIX: &str = "mqsftp/v1";

/// Where the install notes tell the administrator to copy the broker's files.
pub const MOSQUITTO_INSTALL_DIR: &str = "/etc/mosquitto/mqsftp";

/// Default chroot of the SFTP account in the generated `sshd_config`.
pub const SFTP_CHROOT: &str = "/srv/mqsftp";

/// Turns `dir` into text for a Mosquitto config line (which runs to the end of the line).
pub(crate) fn config_path(dir: &Path, file: &'static str) -> Result<String, PkiError> {
    let unusable = |reason| PkiError::UnusablePath { path: dir.to_path_buf(), file, reason };
    let text = dir.to_str().ok_or_else(|| unusable("it is not UTF-8"))?;
    if text.chars().any(char::is_control) {
        return Err(unusable("it contains a control character"));
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// `mosquitto.conf` for Mosquitto 2.0: one mutual-TLS listener on `port`, certificate CN as user
/// name, the ACL file next to it. `dir` is the absolute directory holding the files.
pub(crate) fn mosquitto_conf(dir: &str, port: u16) -> String {
    format!(
        "\
# Mosquitto 2.0 configuration for mqsftp, written by mqsftp-pki.
#
# Every client, the gateway included, must present a certificate signed by ca.crt. The
# certificate's CN becomes its MQTT user name (\"gateway\" for the gateway, the device id for a
# device), and the ACL file decides which topics that name may use. Anonymous clients and
# passwords are refused.
#
# Run it as it is:   mosquitto -c {dir}/mosquitto.conf
# as the user who owns {dir}.
#
# Install it into the system broker (as root). Mosquitto started as root switches to the
# `mosquitto` user BEFORE it reads the certificates, the key and the ACL file, so they must be
# readable by that user, and the key by nobody else:
#
#   install -d -m 0750 -o mosquitto -g mosquitto {install}
#   install -m 0644 -o mosquitto -g mosquitto ca.crt broker.crt crl.pem acl {install}/
#   install -m 0600 -o mosquitto -g mosquitto broker.key {install}/
#   sed 's|{dir}/|{install}/|' mosquitto.conf > /etc/mosquitto/conf.d/mqsftp.conf
#   systemctl restart mosquitto
#
# The stock /etc/mosquitto/mosquitto.conf includes conf.d/ and needs no change. If the broker
# already has listeners of its own, check that they fit `per_listener_settings false`.
#
# After `mqsftp pki revoke ID` (or `pki device ID --reissue`), copy the new crl.pem to
# {install}/ and reload Mosquitto (`systemctl reload mosquitto`, i.e. SIGHUP): until then it
# keeps using the CRL it loaded.

# One set of security settings (anonymous access, ACL) for every listener.
per_listener_settings false
# Send small packets (acknowledgements) at once: with Nagle's algorithm each one can wait 40 ms for the peer's
# delayed ACK, which caps a windowed transfer at about 10 MB/s.
set_tcp_nodelay true
allow_anonymous false
acl_file {dir}/acl

# MQTT over TLS; a client certificate signed by the CA is required.
listener {port}
cafile {dir}/ca.crt
certfile {dir}/broker.crt
keyfile {dir}/broker.key
require_certificate true
use_identity_as_username true
# Revoked client certificates (`mqsftp pki revoke`), signed by the CA.
crlfile {dir}/crl.pem
# Minimum TLS version.
tls_version tlsv1.2
# TLS 1.3 cipher suites, in the broker's order of choice (it picks by its own order, not the client's). OpenSSL's
# own order starts with AES-256-GCM; AES-128-GCM is as safe here and costs the broker, which decrypts and
# re-encrypts every byte, about a seventh less per byte.
ciphers_tls1.3 TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
# Largest MQTT packet, in bytes: a 1 MiB chunk plus headers. A client that sends a bigger one is disconnected
# here, so it can never reach (and disconnect) the gateway, whose client refuses packets above this size.
max_packet_size 1049600
",
        install = MOSQUITTO_INSTALL_DIR,
    )
}

/// The Mosquitto ACL file: each device (user name = certificate CN = device id, `%u`) may only
/// publish requests and uploads under its own id and only read its own responses and downloads;
/// the gateway may use every mqsftp topic.
pub(crate) fn acl() -> String {
    format!(
        "\
# Mosquitto ACL for mqsftp, written by mqsftp-pki.
#
# The MQTT user name is the CN of the client certificate (use_identity_as_username), so in the
# patterns below %u is the device id. A device may publish requests and uploads only under its own
# id, and read only its own responses and downloads. `/#` also matches the level itself, so
# mqsftp/v1/ID/res and mqsftp/v1/ID/res/SESSION are both covered.
#
# Patterns come first: every line after a `user` line belongs to that user only.
pattern write {p}/%u/req/#
pattern write {p}/%u/up/#
pattern read {p}/%u/res/#
pattern read {p}/%u/down/#

# The gateway (certificate CN \"gateway\", a reserved device id) serves every device.
user gateway
topic readwrite {p}/#
",
        p = TOPIC_PREFIX,
    )
}

/// The `sshd_config` block that makes `user` an SFTP-only account locked into `chroot`, with
/// install notes. `user` must be a plain account name (no spaces or patterns); [`crate::init`]
/// checks that.
pub fn sshd_config_snippet(user: &str, chroot: &str) -> String {
    let chroot = chroot.trim_end_matches('/');
    let chroot = if chroot.is_empty() { "/" } else { chroot };
    format!(
        "\
# mqsftp: SFTP-only account for the mqsftp gateway, written by mqsftp-pki.
#
# Install (as root):
#   useradd --system --create-home --home-dir /var/lib/{user} --shell /usr/sbin/nologin {user}
#   install -d -m 0700 -o {user} -g {user} /var/lib/{user}/.ssh
#   install -m 0600 -o {user} -g {user} authorized_keys /var/lib/{user}/.ssh/authorized_keys
#   install -d -m 0755 -o root -g root {chroot}
#   install -d -m 0750 -o {user} -g {user} {chroot}/devices
#   cat sshd_config >> /etc/ssh/sshd_config
#   sshd -t && systemctl reload ssh
#
# A Match block runs to the end of the file (or the next Match), so append this one at the end.
Match User {user}
    # The chroot must be owned by root and writable by nobody else, or sshd refuses the login.
    # The store lives inside it, in {chroot}/devices, owned by {user}. `-d /` starts every session
    # at the chroot, whatever the account's home directory is.
    ChrootDirectory {chroot}
    ForceCommand internal-sftp -d /
    AuthenticationMethods publickey
    PasswordAuthentication no
    KbdInteractiveAuthentication no
    # DisableForwarding covers agent, TCP, stream-local and X11 forwarding; the single settings
    # are spelled out too, for readers and for older sshd.
    DisableForwarding yes
    AllowAgentForwarding no
    AllowTcpForwarding no
    AllowStreamLocalForwarding no
    X11Forwarding no
    PermitTunnel no
    PermitTTY no
    PermitUserRC no
"
    )
}

/// `known_hosts` when the SFTP server's host key is not known yet: comments only.
pub(crate) fn known_hosts_placeholder(host: &Host, port: u16) -> String {
    format!(
        "\
# known_hosts of the mqsftp gateway: the SFTP server's host key, one line per key.
# The gateway refuses a server whose key is not listed here, so this file must be filled in
# before the gateway can connect. Never add wildcard host patterns.
#
# On the SFTP server (the key is genuine when read there):
#   mqsftp pki known-hosts --host {host} --port {port} /etc/ssh/ssh_host_ed25519_key.pub >> known_hosts
# or over the network (compare `ssh-keygen -lf known_hosts` with the server's fingerprint):
#   ssh-keyscan -p {port} -t ed25519 {host} >> known_hosts
"
    )
}

/// Settings of `gateway.toml`.
pub(crate) struct GatewayToml<'a> {
    pub(crate) broker_host: &'a Host,
    pub(crate) broker_port: u16,
    pub(crate) sftp_host: &'a Host,
    pub(crate) sftp_port: u16,
    pub(crate) sftp_user: &'a str,
}

/// `gateway.toml`, with paths relative to its own directory.
pub(crate) fn gateway_toml(g: &GatewayToml<'_>) -> String {
    format!(
        "\
# mqsftp gateway configuration, written by mqsftp-pki.
# Relative paths are resolved against the directory holding this file.

[broker]
host = {broker_host}  # must match a SAN of broker.crt
port = {broker_port}
ca = \"ca.crt\"  # CA that signed broker.crt
cert = \"gateway.crt\"  # client certificate, CN = gateway
key = \"gateway.key\"
client_id = \"mqsftp-gateway\"  # prefix: each running gateway appends its own instance id
keep_alive = \"30s\"

[sftp]
host = {sftp_host}
port = {sftp_port}
user = {sftp_user}
key = \"gateway_ed25519\"  # OpenSSH private key; its public line is in authorized_keys
known_hosts = \"known_hosts\"  # the server's host key must be listed here

[store]
# Root of each device on the SFTP server; \"{{device}}\" is replaced by the device id.
# Relative paths are relative to the SFTP login directory (the chroot in the generated sshd_config).
device_root = \"devices/{{device}}\"

[transfer]
# 255 KiB: the most OpenSSH answers in one SFTP read, so each chunk is one read (docs/performance.md).
chunk_size = 261120
# Chunks in flight: at most `window` per transfer, and `shared_window` over all transfers together (each running
# transfer gets its share, at least 2): a lone transfer goes fast, and under load answers wait behind less.
window = 8
shared_window = 32
# Messages (of all transfers) the broker may leave unacknowledged: what an answer can find queued ahead of it.
# Throughput to the broker is at most this many chunks per round trip, and one transfer's at most `window`: raise
# both for a broker far away (20 ms: broker_window = 32, window = 16; see docs/performance.md).
broker_window = 4

[runtime]
# Threads of the gateway process: 1 costs the least CPU per byte; 0 = one per CPU core, for a busy gateway whose
# own work (TLS, SSH, hashing: about 230 MB/s per core) is the limit.
threads = 1
",
        broker_host = toml_string(&g.broker_host.to_string()),
        broker_port = g.broker_port,
        sftp_host = toml_string(&g.sftp_host.to_string()),
        sftp_port = g.sftp_port,
        sftp_user = toml_string(g.sftp_user),
    )
}

/// `device.toml` for device `id`, with paths relative to its own directory.
pub(crate) fn device_toml(id: &str, broker_host: &Host, broker_port: u16) -> String {
    format!(
        "\
# mqsftp device configuration, written by mqsftp-pki.
# Relative paths are resolved against the directory holding this file.
device_id = {id}

[broker]
host = {host}  # must match a SAN of the broker's certificate
port = {broker_port}
ca = \"ca.crt\"
cert = \"device.crt\"  # client certificate, CN = device id
key = \"device.key\"
keep_alive = \"30s\"

[transfer]
timeout = \"15s\"  # how long to wait for the gateway to answer a request
hash = \"blake3\"  # verify transfers with blake3 (fast) or sha256 (to compare with sha256sum)
",
        id = toml_string(id),
        host = toml_string(&broker_host.to_string()),
    )
}
