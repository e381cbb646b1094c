//! The host system: where programs are, who we are, a free port.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::TestkitError;

/// A program the testkit or its tests run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Program {
    /// File name, e.g. `mosquitto`.
    pub name: &'static str,
    /// Environment variable that overrides the location, if any.
    pub env: Option<&'static str>,
    /// Where Debian installs it.
    pub default_path: &'static str,
    /// The Debian package that has it.
    pub package: &'static str,
}

impl Program {
    /// The MQTT broker.
    pub const MOSQUITTO: Program = Program {
        name: "mosquitto",
        env: Some("MQSFTP_MOSQUITTO"),
        default_path: "/usr/sbin/mosquitto",
        package: "mosquitto",
    };
    /// The SSH server.
    pub const SSHD: Program =
        Program { name: "sshd", env: Some("MQSFTP_SSHD"), default_path: "/usr/sbin/sshd", package: "openssh-server" };
    /// OpenSSH's SFTP client.
    pub const SFTP: Program =
        Program { name: "sftp", env: None, default_path: "/usr/bin/sftp", package: "openssh-client" };
    /// OpenSSH's key tool.
    pub const SSH_KEYGEN: Program =
        Program { name: "ssh-keygen", env: None, default_path: "/usr/bin/ssh-keygen", package: "openssh-client" };
    /// OpenSSH's host key fetcher.
    pub const SSH_KEYSCAN: Program =
        Program { name: "ssh-keyscan", env: None, default_path: "/usr/bin/ssh-keyscan", package: "openssh-client" };
    /// Mosquitto's publishing client.
    pub const MOSQUITTO_PUB: Program = Program {
        name: "mosquitto_pub",
        env: None,
        default_path: "/usr/bin/mosquitto_pub",
        package: "mosquitto-clients",
    };
    /// Mosquitto's subscribing client.
    pub const MOSQUITTO_SUB: Program = Program {
        name: "mosquitto_sub",
        env: None,
        default_path: "/usr/bin/mosquitto_sub",
        package: "mosquitto-clients",
    };

    /// Finds the program: the environment variable (which must then name an existing file), else
    /// the Debian path, else `PATH`. Never "skips": a missing program is an error.
    pub fn find(&self) -> Result<PathBuf, TestkitError> {
        if let Some(var) = self.env {
            if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
                let path = PathBuf::from(&value);
                return if path.is_file() {
                    // sshd re-executes itself by its own path for every connection: make it absolute.
                    Ok(std::path::absolute(&path).unwrap_or(path))
                } else {
                    Err(self.missing(format!("{var}={}", path.display())))
                };
            }
        }
        let default = Path::new(self.default_path);
        if default.is_file() {
            return Ok(default.to_path_buf());
        }
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        if let Some(found) =
            std::env::split_paths(&path_var).map(|dir| dir.join(self.name)).find(|candidate| candidate.is_file())
        {
            return Ok(std::path::absolute(&found).unwrap_or(found));
        }
        let mut looked = String::new();
        if let Some(var) = self.env {
            looked.push_str(&format!("${var} (unset), "));
        }
        looked.push_str(&format!("{} and $PATH", self.default_path));
        Err(self.missing(looked))
    }

    fn missing(&self, looked: String) -> TestkitError {
        TestkitError::MissingProgram { program: self.name.to_string(), looked, package: self.package }
    }
}

/// Runs `id ARGS` and returns its output, trimmed.
fn id(args: &[&str]) -> Result<String, TestkitError> {
    run("id", args)
}

/// Runs `program ARGS` and returns its output, trimmed; fails unless it exits 0.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, TestkitError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| TestkitError::Command { command: command.clone(), source })?;
    if !out.status.success() {
        return Err(TestkitError::CommandFailed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Parses the number `id -u`/`id -g` printed.
fn id_number(args: &[&str]) -> Result<u32, TestkitError> {
    let output = id(args)?;
    output.parse().map_err(|_| TestkitError::CommandOutput { command: format!("id {}", args.join(" ")), output })
}

/// The user this process runs as (`id -un`): the SFTP account of the test stack.
pub(crate) fn current_user() -> Result<String, TestkitError> {
    id(&["-un"])
}

/// Whether this process runs as root (`id -u` is 0).
pub(crate) fn is_root() -> Result<bool, TestkitError> {
    Ok(id_number(&["-u"])? == 0)
}

/// Uid and gid of `user` (`id -u USER`, `id -g USER`).
pub(crate) fn user_ids(user: &str) -> Result<(u32, u32), TestkitError> {
    Ok((id_number(&["-u", user])?, id_number(&["-g", user])?))
}

/// A port on 127.0.0.1 that was free a moment ago: bind port 0, read the port, let it go. Another
/// process may take it before the server binds it; the caller retries then.
pub(crate) fn free_port() -> Result<u16, TestkitError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(TestkitError::FreePort)?;
    let port = listener.local_addr().map_err(TestkitError::FreePort)?.port();
    Ok(port)
}

/// How many of `file`'s pages in the page cache are dirty: written, and not yet being written to disk. From the
/// `cachestat` system call (Linux 6.5 and later; an older kernel is an error, not a zero).
///
/// Tests use it to see that a long transfer has the kernel write its data as it arrives: left alone, the kernel
/// keeps a file's pages dirty for 30 s (`vm.dirty_expire_centisecs`) unless a tenth of the memory is dirty.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn dirty_pages(file: &std::fs::File) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    /// The kernel's `struct cachestat_range`: offset and length, 0 meaning to the end.
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    /// The kernel's `struct cachestat`.
    #[repr(C)]
    #[derive(Default)]
    struct CacheStat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    // The same number on every architecture: system calls added since Linux 5.1 share one table.
    const SYS_CACHESTAT: libc::c_long = 451;
    let range = Range { off: 0, len: 0 };
    let mut stat = CacheStat::default();
    // SAFETY: both pointers are to live values laid out as the kernel's structs; the call writes only `stat`.
    let r = unsafe {
        libc::syscall(SYS_CACHESTAT, file.as_raw_fd(), &range as *const Range, &mut stat as *mut CacheStat, 0)
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.nr_dirty)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::Write;

    #[test]
    fn dirty_pages_counts_what_is_written_and_not_what_is_synced() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        let dirty = super::dirty_pages(&f).unwrap();
        assert!(dirty >= (1 << 20) / 4096, "{dirty} dirty pages after writing 1 MiB");
        f.sync_all().unwrap();
        assert_eq!(super::dirty_pages(&f).unwrap(), 0);
    }
}
