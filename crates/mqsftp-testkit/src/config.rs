//! The config files of the test stack: derived from the ones mqsftp-pki writes, changing as
//! little as possible, so the tests exercise the generated files.

use std::fs;
use std::path::Path;

use crate::TestkitError;

/// Address every server of the stack listens on.
pub const HOST: &str = "127.0.0.1";

/// Reads a UTF-8 file.
pub(crate) fn read(path: &Path) -> Result<String, TestkitError> {
    fs::read_to_string(path).map_err(|e| TestkitError::io("read", path, e))
}

/// Writes (creating or truncating) a file.
pub(crate) fn write(path: &Path, contents: &str) -> Result<(), TestkitError> {
    fs::write(path, contents).map_err(|e| TestkitError::io("write", path, e))
}

/// A path as text for a server config line: absolute, UTF-8, and without whitespace, quotes or
/// control characters (sshd_config splits on whitespace and `ForceCommand` passes the rest of the
/// line to internal-sftp, which splits it again).
pub(crate) fn config_path(path: &Path) -> Result<&str, TestkitError> {
    let unusable = |reason: &str| TestkitError::UnexpectedFile {
        path: path.to_path_buf(),
        reason: format!("this path cannot go into a server config file: {reason}"),
    };
    let text = path.to_str().ok_or_else(|| unusable("it is not UTF-8"))?;
    if !path.is_absolute() {
        return Err(unusable("it is not absolute"));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\')) {
        return Err(unusable("it contains whitespace, a quote or a backslash (set TMPDIR to a plain path)"));
    }
    Ok(text)
}

/// `mosquitto-test.conf`: the generated `mosquitto.conf` with its one `listener PORT` line bound
/// to 127.0.0.1 and `port` instead. Nothing else changes: Mosquitto logs to stderr by default,
/// which is captured into the log file.
pub(crate) fn mosquitto_test_conf(path: &Path, original: &str, port: u16) -> Result<String, TestkitError> {
    let wanted = format!("listener {}", mqsftp_pki::DEFAULT_BROKER_PORT);
    let mut found = 0;
    let mut out = String::with_capacity(original.len() + 16);
    for line in original.lines() {
        if line.trim() == wanted {
            found += 1;
            out.push_str(&format!("listener {port} {HOST}"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if found != 1 {
        return Err(TestkitError::UnexpectedFile {
            path: path.to_path_buf(),
            reason: format!("expected exactly one `{wanted}` line, found {found}"),
        });
    }
    Ok(out)
}

/// Paths and names that go into the test `sshd_config`.
pub(crate) struct SshdConfig<'a> {
    pub(crate) port: u16,
    pub(crate) host_key: &'a Path,
    pub(crate) pid_file: &'a Path,
    pub(crate) authorized_keys: &'a Path,
    pub(crate) user: &'a str,
    pub(crate) store_dir: &'a Path,
}

/// A complete, private `sshd_config`: key login of `user` only, SFTP only, sessions starting in
/// the store directory (no chroot, so it works without root).
pub(crate) fn sshd_config(c: &SshdConfig<'_>) -> Result<String, TestkitError> {
    Ok(format!(
        "\
# sshd_config of an mqsftp-testkit stack.
Port {port}
ListenAddress {HOST}
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
# The temp dir is not laid out like a home directory; the key file's own mode still counts.
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AllowUsers {user}
PermitRootLogin prohibit-password
DisableForwarding yes
LogLevel VERBOSE
Subsystem sftp internal-sftp
# Relative paths such as devices/{{device}} resolve inside the store directory.
ForceCommand internal-sftp -d {store_dir}
",
        port = c.port,
        host_key = config_path(c.host_key)?,
        pid_file = config_path(c.pid_file)?,
        authorized_keys = config_path(c.authorized_keys)?,
        user = c.user,
        store_dir = config_path(c.store_dir)?,
    ))
}

/// Parses a TOML file into a table.
pub(crate) fn read_toml(path: &Path) -> Result<toml::Table, TestkitError> {
    read(path)?.parse::<toml::Table>().map_err(|source| TestkitError::Toml { path: path.to_path_buf(), source })
}

/// Writes a table as a TOML file.
pub(crate) fn write_toml(path: &Path, table: &toml::Table) -> Result<(), TestkitError> {
    let text = toml::to_string(table).map_err(|source| TestkitError::TomlWrite { path: path.to_path_buf(), source })?;
    write(path, &text)
}

/// The `[section]` table of a config file, which must exist.
pub(crate) fn section<'t>(
    table: &'t mut toml::Table,
    path: &Path,
    name: &str,
) -> Result<&'t mut toml::Table, TestkitError> {
    table
        .get_mut(name)
        .and_then(toml::Value::as_table_mut)
        .ok_or_else(|| TestkitError::UnexpectedFile { path: path.to_path_buf(), reason: format!("no [{name}] table") })
}

/// Sets `[section] key = value`; the key must already be there (this only redirects the
/// generated file, it never adds settings).
pub(crate) fn replace(
    table: &mut toml::Table,
    path: &Path,
    name: &str,
    key: &str,
    value: impl Into<toml::Value>,
) -> Result<(), TestkitError> {
    let slot = section(table, path, name)?.get_mut(key).ok_or_else(|| TestkitError::UnexpectedFile {
        path: path.to_path_buf(),
        reason: format!("no {key} in [{name}]"),
    })?;
    *slot = value.into();
    Ok(())
}

/// Where the gateway of a stack finds its servers.
pub(crate) struct GatewayTest<'a> {
    pub(crate) mqtt_port: u16,
    pub(crate) sftp_port: u16,
    /// File name of the stack's `known_hosts`, relative to the pki directory.
    pub(crate) known_hosts: &'a str,
}

/// Writes `gateway-test.toml` next to `gateway.toml`: the same settings, with only the broker and
/// SFTP host and port and the `known_hosts` file changed.
pub(crate) fn write_gateway_test(original: &Path, out: &Path, g: &GatewayTest<'_>) -> Result<(), TestkitError> {
    let mut table = read_toml(original)?;
    replace(&mut table, original, "broker", "host", HOST)?;
    replace(&mut table, original, "broker", "port", i64::from(g.mqtt_port))?;
    replace(&mut table, original, "sftp", "host", HOST)?;
    replace(&mut table, original, "sftp", "port", i64::from(g.sftp_port))?;
    replace(&mut table, original, "sftp", "known_hosts", g.known_hosts)?;
    write_toml(out, &table)
}

/// Removes `[broker] cert` and `key` from a `device.toml`, in place.
pub(crate) fn strip_client_cert(device_toml: &Path) -> Result<(), TestkitError> {
    let mut table = read_toml(device_toml)?;
    let broker = section(&mut table, device_toml, "broker")?;
    for key in ["cert", "key"] {
        if broker.remove(key).is_none() {
            return Err(TestkitError::UnexpectedFile {
                path: device_toml.to_path_buf(),
                reason: format!("no {key} in [broker]"),
            });
        }
    }
    write_toml(device_toml, &table)
}

/// Copies a file, replacing the destination.
pub(crate) fn copy(from: &Path, to: &Path) -> Result<(), TestkitError> {
    match fs::copy(from, to) {
        Ok(_) => Ok(()),
        Err(e) => Err(TestkitError::io("copy a file to", to, e)),
    }
}
