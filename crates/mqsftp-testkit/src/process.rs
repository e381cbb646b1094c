//! One server process: spawned with its output in a log file, waited for until it accepts TCP
//! connections, killed and reaped.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TestkitError;

/// How long a server gets to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the port of a killed server may keep accepting connections.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the child, its log and its port are checked while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Lines of log shown in startup errors.
const TAIL_LINES: usize = 30;
/// Both Mosquitto ("Error: Address already in use") and sshd ("Bind to port … failed: Address
/// already in use.") print strerror(EADDRINUSE).
const ADDRESS_IN_USE: &str = "Address already in use";

/// A server program, running or not. Dropping it kills and reaps the process.
#[derive(Debug)]
pub(crate) struct Server {
    /// "mosquitto" or "sshd", for messages.
    pub(crate) name: &'static str,
    program: PathBuf,
    /// Log file: stdout and stderr of every run, appended.
    log: PathBuf,
    /// Tells from one line of the log that the server is fully set up.
    ready: fn(&str, u16) -> bool,
    /// Arguments of the current configuration.
    args: Vec<OsString>,
    /// Port of the current configuration.
    pub(crate) port: u16,
    child: Option<Child>,
}

impl Server {
    pub(crate) fn new(name: &'static str, program: PathBuf, log: PathBuf, ready: fn(&str, u16) -> bool) -> Self {
        Self { name, program, log, ready, args: Vec::new(), port: 0, child: None }
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log
    }

    /// The process id, while running.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the server has logged so far (lossy UTF-8; empty if there is no log yet).
    pub(crate) fn log(&self) -> String {
        read_log(&self.log, 0)
    }

    /// Waits until the log contains `needle`; the server logs on its own schedule, so a client
    /// may finish before the server has written why it refused it.
    pub(crate) fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<(), TestkitError> {
        let started = Instant::now();
        loop {
            let log = self.log();
            if log.contains(needle) {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(TestkitError::LogTimeout {
                    server: self.name,
                    needle: needle.to_string(),
                    waited: started.elapsed(),
                    log: self.log.clone(),
                    tail: tail(&log),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Sets what the next [`Server::start`] runs.
    pub(crate) fn configure(&mut self, args: Vec<OsString>, port: u16) {
        self.args = args;
        self.port = port;
    }

    /// Starts the server and waits until it is ready (its log says so) and 127.0.0.1:port
    /// accepts a TCP connection. Fails at once with the log tail when the process exits:
    /// [`TestkitError::PortInUse`] (with `attempts: 1`) when its log says the port was taken,
    /// which the caller may answer with another port.
    pub(crate) fn start(&mut self) -> Result<(), TestkitError> {
        if let Some(pid) = self.pid() {
            return Err(TestkitError::AlreadyRunning { server: self.name, pid, port: self.port });
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| TestkitError::io("open log", &self.log, e))?;
        let log_start = log.metadata().map_err(|e| TestkitError::io("inspect", &self.log, e))?.len();
        let stderr = log.try_clone().map_err(|e| TestkitError::io("open log", &self.log, e))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|source| TestkitError::Spawn { server: self.name, program: self.program.clone(), source })?;
        tracing::debug!(server = self.name, pid = child.id(), port = self.port, "started");
        self.child = Some(child);
        let result = self.wait_ready(log_start);
        if result.is_err() {
            // Never leave a half-started server behind.
            let _ = self.stop();
        }
        result
    }

    fn wait_ready(&mut self, log_start: u64) -> Result<(), TestkitError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let started = Instant::now();
        loop {
            // Exit status first, log second: after an exit the log is complete.
            let exited = self.try_wait()?;
            let log = read_log(&self.log, log_start);
            if let Some(status) = exited {
                self.child = None;
                let tail = tail(&log);
                if log.contains(ADDRESS_IN_USE) {
                    return Err(TestkitError::PortInUse {
                        server: self.name,
                        port: self.port,
                        attempts: 1,
                        log: self.log.clone(),
                        tail,
                    });
                }
                return Err(TestkitError::Exited {
                    server: self.name,
                    port: self.port,
                    status,
                    log: self.log.clone(),
                    tail,
                });
            }
            // The log line first, then one connection: Mosquitto listens before it loads its key,
            // so an open port alone does not mean it will stay up.
            if log.lines().any(|line| (self.ready)(line, self.port))
                && TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
            {
                tracing::debug!(server = self.name, port = self.port, waited = ?started.elapsed(), "ready");
                return Ok(());
            }
            if started.elapsed() >= START_TIMEOUT {
                return Err(TestkitError::Timeout {
                    server: self.name,
                    port: self.port,
                    waited: started.elapsed(),
                    log: self.log.clone(),
                    tail: tail(&log),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>, TestkitError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let pid = child.id();
        child.try_wait().map_err(|source| TestkitError::Process { action: "wait for", server: self.name, pid, source })
    }

    /// Kills (SIGKILL) and reaps the process we spawned, if it runs. Returns whether it ran.
    pub(crate) fn stop(&mut self) -> Result<bool, TestkitError> {
        let Some(mut child) = self.child.take() else {
            return Ok(false);
        };
        let pid = child.id();
        let process_err = |action, source| TestkitError::Process { action, server: self.name, pid, source };
        // kill() on a child that already exited (but is not reaped yet) is harmless: the pid is
        // still ours until wait() below.
        if child.try_wait().map_err(|e| process_err("wait for", e))?.is_none() {
            child.kill().map_err(|e| process_err("kill", e))?;
        }
        child.wait().map_err(|e| process_err("wait for", e))?;
        tracing::debug!(server = self.name, pid, "stopped");
        self.wait_port_closed()?;
        Ok(true)
    }

    /// Waits until nothing accepts connections on the port any more.
    ///
    /// The process we killed is gone at once, but its listening socket may live on for a moment:
    /// sshd forks a child per connection (our readiness probe is one), and that child holds the
    /// listening socket from `fork` until it closes it first thing, a few milliseconds later,
    /// if the kernel lets it run; restarting on the port in that window fails with "Address
    /// already in use", and a client would still get its connection accepted.
    fn wait_port_closed(&self) -> Result<(), TestkitError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            if started.elapsed() >= STOP_TIMEOUT {
                return Err(TestkitError::StillListening {
                    server: self.name,
                    port: self.port,
                    waited: started.elapsed(),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(server = self.name, error = %e, "cannot stop server");
        }
    }
}

/// The log from byte `from` on, lossy UTF-8; empty when it cannot be read.
fn read_log(path: &Path, from: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = File::open(path) {
        if file.seek(SeekFrom::Start(from)).is_ok() {
            let _ = file.read_to_end(&mut bytes);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last [`TAIL_LINES`] lines of `log`.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let text = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    if text.is_empty() {
        "(empty)".to_string()
    } else {
        text
    }
}
