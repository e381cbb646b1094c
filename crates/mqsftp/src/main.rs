//! `mqsftp`: the command line. Glue only: parse arguments, call the libraries, print one error with its causes,
//! return an exit code (see [`exit`]).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mqsftp_device::{Client, DeviceConfig, DeviceError, EntryKind, ErrorCode, MqttError};
use mqsftp_gateway::{Gateway, GatewayConfig};
use mqsftp_proto::{Digest, HashAlg};

mod demo;

/// Exit codes, documented in `--help` and the README.
mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const NOT_FOUND: u8 = 3;
    pub const PERMISSION_DENIED: u8 = 4;
    pub const NO_GATEWAY: u8 = 5;
    pub const TLS: u8 = 6;
    pub const VERIFY: u8 = 7;
    pub const UNREACHABLE: u8 = 8;
    pub const EXISTS: u8 = 9;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  success (for get: the file is in place and its SHA-256 verified)
  1  any other failure (bad config, local I/O, gateway error)
  2  bad command line
  3  remote file not found
  4  permission denied (path outside the device root, or the store refused)
  5  no gateway answered, or the transfer stalled (timeout)
  6  TLS or certificate problem (broker certificate not trusted, or ours refused)
  7  the received file failed verification (size or SHA-256)
  8  broker unreachable or refused the connection
  9  the target exists (put and mv replace it only with --overwrite)";

#[derive(Parser)]
#[command(name = "mqsftp", version, about = "Secure file transfer between IoT devices (MQTT) and SFTP storage", after_help = EXIT_CODES)]
struct Cli {
    /// Print results (and errors, as {"error": CODE, "message": ...}) as JSON on stdout, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// See mqsftp work in one command: a private deployment with embedded broker and SFTP server in a temporary
    /// directory, then a device uploads, lists, downloads and verifies a file. Exit 0 only if all verified.
    Demo {
        /// Size of the generated file (bytes, or with KiB, MiB, GiB).
        #[arg(long, default_value = "64 MiB", value_parser = parse_size)]
        size: u64,
        /// Keep the temporary directory (PKI, store, files) and print where it is.
        #[arg(long)]
        keep: bool,
    },
    /// Run the demo deployment (embedded broker and SFTP server, gateway) in DIR until Ctrl-C, and print the
    /// commands to try from another terminal. Run again with the same DIR to reuse its keys and ports.
    Dev {
        /// Where the PKI, configs and store live.
        #[arg(long, default_value = "mqsftp-dev")]
        dir: PathBuf,
    },
    /// Create certificates, keys and server config files for a deployment.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Run the gateway: serve devices' requests from the SFTP store.
    Gateway {
        /// gateway.toml (written by `mqsftp pki init`).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Download REMOTE (relative to the device's root) to LOCAL, verified by its hash (BLAKE3 unless told otherwise).
    #[command(after_help = EXIT_CODES)]
    Get {
        /// device.toml (written by `mqsftp pki device`).
        #[arg(long, short)]
        config: PathBuf,
        /// Path of the file on the store, relative to the device's root.
        remote: String,
        /// Where to write it (default: the remote file name in the current directory). An existing directory
        /// receives the remote file name.
        local: Option<PathBuf>,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
        /// Verify with this hash: blake3 or sha256 (default: `[transfer] hash` in device.toml, else blake3).
        #[arg(long, value_parser = parse_hash)]
        hash: Option<HashAlg>,
    },
    /// Upload LOCAL to REMOTE (relative to the device's root); it appears there only once verified.
    #[command(after_help = EXIT_CODES)]
    Put {
        /// device.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// The local file.
        local: PathBuf,
        /// Where on the store, relative to the device's root (default: the local file name).
        remote: Option<String>,
        /// Replace an existing remote file (atomically).
        #[arg(long)]
        overwrite: bool,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
        /// Verify with this hash: blake3 or sha256 (default: `[transfer] hash` in device.toml, else blake3).
        #[arg(long, value_parser = parse_hash)]
        hash: Option<HashAlg>,
    },
    /// List a directory (default: the device's root).
    #[command(after_help = EXIT_CODES)]
    Ls {
        /// device.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// Directory relative to the device's root.
        #[arg(default_value = "")]
        remote: String,
    },
    /// Show size, modification time and type of a remote path.
    #[command(after_help = EXIT_CODES)]
    Stat {
        /// device.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// Path relative to the device's root.
        remote: String,
    },
    /// Remove a remote file or empty directory.
    #[command(after_help = EXIT_CODES)]
    Rm {
        /// device.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// Path relative to the device's root.
        remote: String,
    },
    /// Create a remote directory (its parent must exist).
    #[command(after_help = EXIT_CODES)]
    Mkdir {
        /// device.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// Path relative to the device's root.
        remote: String,
    },
    /// Rename a remote path.
    #[command(after_help = EXIT_CODES)]
    Mv {
        /// device.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// Existing path relative to the device's root.
        from: String,
        /// New path relative to the device's root.
        to: String,
        /// Replace an existing target (atomically).
        #[arg(long)]
        overwrite: bool,
    },
    /// Check that a device or gateway config works: one line per check, exit 0 only if all pass.
    Check {
        /// A device.toml or gateway.toml.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create the CA, broker and gateway certificates, the gateway's SSH key and the Mosquitto/sshd files.
    Init {
        /// Directory to write into (created if missing). Existing keys are never replaced.
        #[arg(long)]
        dir: PathBuf,
        /// Extra DNS name or IP of the broker for its certificate (localhost, 127.0.0.1 and ::1 are always in).
        #[arg(long = "broker-host")]
        broker_hosts: Vec<String>,
        /// Broker TLS port.
        #[arg(long, default_value_t = mqsftp_pki::DEFAULT_BROKER_PORT)]
        broker_port: u16,
        /// Login user of the gateway on the SFTP server.
        #[arg(long, default_value = mqsftp_pki::DEFAULT_SFTP_USER)]
        sftp_user: String,
        /// SFTP server host, as the gateway reaches it.
        #[arg(long, default_value = "localhost")]
        sftp_host: String,
        /// SFTP server port.
        #[arg(long, default_value_t = 22)]
        sftp_port: u16,
        /// The SFTP server's public host key (e.g. /etc/ssh/ssh_host_ed25519_key.pub), pinned in known_hosts.
        #[arg(long)]
        sftp_host_key: Option<PathBuf>,
        /// Lifetime of the CA certificate, in days.
        #[arg(long, default_value_t = mqsftp_pki::DEFAULT_CA_DAYS)]
        ca_days: u32,
        /// Lifetime of the broker and gateway certificates, in days.
        #[arg(long, default_value_t = mqsftp_pki::DEFAULT_CERT_DAYS)]
        cert_days: u32,
        /// Encrypt ca.key with the passphrase in this file (one line). Without it, the passphrase comes from
        /// MQSFTP_PKI_PASSPHRASE when that is set; otherwise ca.key is not encrypted.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Issue a device certificate and its device.toml in DIR/devices/ID/.
    Device {
        /// Device id: becomes the certificate CN and the device's topic level.
        id: String,
        /// The directory given to `pki init`.
        #[arg(long)]
        dir: PathBuf,
        /// Broker host as the device reaches it.
        #[arg(long, default_value = "localhost")]
        broker_host: String,
        /// Broker TLS port.
        #[arg(long, default_value_t = mqsftp_pki::DEFAULT_BROKER_PORT)]
        broker_port: u16,
        /// Lifetime of the device certificate, in days (at most the CA's remaining lifetime).
        #[arg(long, default_value_t = mqsftp_pki::DEFAULT_CERT_DAYS)]
        days: u32,
        /// Replace the device's key and certificate with new ones; the old certificate is revoked (reason
        /// superseded) and crl.pem rewritten. device.toml is kept. Reload the broker afterwards.
        #[arg(long)]
        reissue: bool,
        /// Passphrase file of an encrypted ca.key (default: MQSFTP_PKI_PASSPHRASE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Revoke every certificate of device ID and rewrite DIR/crl.pem; then reload the broker (SIGHUP).
    Revoke {
        /// Device id.
        id: String,
        /// The directory given to `pki init`.
        #[arg(long)]
        dir: PathBuf,
        /// Why: unspecified, key-compromise, superseded, cessation-of-operation, affiliation-changed,
        /// privilege-withdrawn.
        #[arg(long, default_value = "unspecified")]
        reason: String,
        /// Passphrase file of an encrypted ca.key (default: MQSFTP_PKI_PASSPHRASE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Encrypt a private key in place: a PKCS#8 key (gateway.key, device.key, ca.key) or the OpenSSH key
    /// gateway_ed25519. Then set passphrase_file or passphrase_env beside `key` in the config that uses it.
    EncryptKey {
        /// The key file.
        key: PathBuf,
        /// File holding the new passphrase (one line). Default: MQSFTP_PKI_PASSPHRASE.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Print the known_hosts line that pins an SSH server's public host key.
    KnownHosts {
        /// The server's host name or IP as the gateway reaches it.
        #[arg(long)]
        host: String,
        /// The server's port.
        #[arg(long, default_value_t = 22)]
        port: u16,
        /// Print the host name hashed (|1|salt|hash), as `ssh-keygen -H` does.
        #[arg(long)]
        hash: bool,
        /// The server's public host key file.
        key: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The commands that move files' bytes, on AMD processors with glibc before 2.40: start again with copies kept
    // off `rep movsb` (a tunable, read only at start; `heap` module doc). That costs ~1 ms; nothing has happened yet
    // that a second start would repeat.
    let moves_bytes = matches!(
        cli.command,
        Command::Gateway { .. }
            | Command::Get { .. }
            | Command::Put { .. }
            | Command::Dev { .. }
            | Command::Demo { .. }
    );
    let restart_failed = if moves_bytes { restart_with_copy_tunables() } else { None };
    // Before any other thread exists: chunk-sized buffers stay in the heap instead of being faulted in anew.
    mqsftp_mqtt::heap::tune();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log_filter(&cli.command))),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: a service's log goes to a file or journald, where they are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match (&restart_failed, std::env::var_os(mqsftp_mqtt::heap::RESTARTED_ENV)) {
        (Some(e), _) => {
            tracing::debug!(error = %e, "could not start again with GLIBC_TUNABLES; copies may use rep movsb")
        }
        (None, Some(_)) => tracing::debug!(
            tunables = ?std::env::var_os("GLIBC_TUNABLES"),
            "started again with GLIBC_TUNABLES: copies keep off rep movsb (AMD, glibc bug 30994)"
        ),
        (None, None) => {}
    }
    // The device commands run one transfer: a single-threaded runtime saves the cross-thread wake-ups between the
    // MQTT event loop and the transfer (docs/performance.md). The gateway runs as many threads as its config's
    // `[runtime] threads` says (one by default, for the same reason), so its config is loaded first; one that does
    // not load is reported by `gateway`, on one thread. `dev` and `demo` run broker, SFTP server and gateway: a
    // thread per core.
    let gateway_cfg = match &cli.command {
        Command::Gateway { config } => Some(GatewayConfig::load(config)),
        _ => None,
    };
    let threads = match (&cli.command, &gateway_cfg) {
        (_, Some(Ok(cfg))) => cfg.runtime.threads,
        (Command::Dev { .. } | Command::Demo { .. }, _) => 0,
        _ => 1,
    };
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let json = cli.json;
    match runtime.block_on(run(cli.command, json, gateway_cfg)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            if json {
                let code = match e.downcast_ref::<DeviceError>() {
                    Some(DeviceError::Remote { code, .. }) => code.as_str(),
                    Some(DeviceError::Integrity { .. }) => ErrorCode::ChecksumMismatch.as_str(),
                    _ => "local",
                };
                println!("{}", serde_json::json!({ "error": code, "message": format!("{e:#}") }));
            }
            ExitCode::from(exit_code_of(&e))
        }
    }
}

/// Replaces this process with its own executable, the same arguments and `GLIBC_TUNABLES` from
/// [`mqsftp_mqtt::heap::copy_tunables`], when that asks for it. Returns only when it does not, or when the `exec`
/// failed (its error).
fn restart_with_copy_tunables() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    let tunables = mqsftp_mqtt::heap::copy_tunables()?;
    let mut args = std::env::args_os();
    let argv0 = args.next()?;
    // The file's own path, not /proc/self/exe, so that the process keeps its name ("mqsftp" in ps, top, journald).
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return Some(e),
    };
    let err = std::process::Command::new(exe)
        .arg0(argv0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .env(mqsftp_mqtt::heap::RESTARTED_ENV, "1")
        .exec();
    Some(err)
}

fn default_log_filter(cmd: &Command) -> &'static str {
    match cmd {
        Command::Gateway { .. } | Command::Dev { .. } => "info",
        _ => "warn",
    }
}

fn exit_code_of(e: &anyhow::Error) -> u8 {
    let Some(d) = e.downcast_ref::<DeviceError>() else {
        return exit::FAILURE;
    };
    match d {
        DeviceError::Remote { code: ErrorCode::NotFound, .. } => exit::NOT_FOUND,
        DeviceError::Remote { code: ErrorCode::PermissionDenied, .. } => exit::PERMISSION_DENIED,
        DeviceError::Remote { code: ErrorCode::Exists, .. } => exit::EXISTS,
        DeviceError::Remote { code: ErrorCode::ChecksumMismatch, .. } => exit::VERIFY,
        DeviceError::NoGateway { .. } | DeviceError::Stalled { .. } => exit::NO_GATEWAY,
        DeviceError::Integrity { .. } => exit::VERIFY,
        DeviceError::Mqtt(m) if m.is_tls() => exit::TLS,
        DeviceError::Mqtt(MqttError::SubscriptionRefused { .. }) => exit::PERMISSION_DENIED,
        DeviceError::Mqtt(_) => exit::UNREACHABLE,
        _ => exit::FAILURE,
    }
}

/// Runs `cmd`; `gateway_cfg` is the gateway config `main` loaded already (for `Command::Gateway`).
async fn run(
    cmd: Command,
    json: bool,
    gateway_cfg: Option<Result<GatewayConfig, mqsftp_gateway::ConfigError>>,
) -> anyhow::Result<u8> {
    match cmd {
        Command::Pki(p) => pki(p),
        Command::Demo { size, keep } => demo::demo(size, keep).await.map(|()| exit::OK),
        Command::Dev { dir } => demo::dev(&dir, shutdown_signal()).await.map(|()| exit::OK),
        Command::Gateway { config } => gateway(gateway_cfg.unwrap_or_else(|| GatewayConfig::load(&config))).await,
        Command::Get { config, remote, local, quiet, hash } => {
            get((&config, hash), &remote, local, quiet || json, json).await
        }
        Command::Put { config, local, remote, overwrite, quiet, hash } => {
            put((&config, hash), &local, remote, overwrite, quiet || json, json).await
        }
        Command::Ls { config, remote } => {
            let entries = device(&config).await?.list(&remote).await?;
            if json {
                println!("{}", serde_json::to_string(&entries)?);
            }
            for e in entries.iter().filter(|_| !json) {
                let kind = match e.kind {
                    EntryKind::Dir => "d",
                    EntryKind::File => "-",
                    EntryKind::Symlink => "l",
                    EntryKind::Other => "?",
                };
                let slash = if e.kind == EntryKind::Dir { "/" } else { "" };
                let mtime = e.mtime.map(|t| t.to_string()).unwrap_or_default();
                println!("{kind} {:>12} {mtime:>10} {}{slash}", e.size, e.name);
            }
            Ok(exit::OK)
        }
        Command::Stat { config, remote } => {
            let e = device(&config).await?.stat(&remote).await?;
            if json {
                println!("{}", serde_json::to_string(&e)?);
            } else {
                let mtime = e.mtime.map(|t| t.to_string()).unwrap_or_else(|| "unknown".into());
                println!("{remote}: {:?}, {} bytes, mtime {mtime}", e.kind, e.size);
            }
            Ok(exit::OK)
        }
        Command::Rm { config, remote } => {
            done(device(&config).await?.remove(&remote).await, json, &format!("removed {remote}"))
        }
        Command::Mkdir { config, remote } => {
            done(device(&config).await?.mkdir(&remote).await, json, &format!("created {remote}"))
        }
        Command::Mv { config, from, to, overwrite } => {
            let r = device(&config).await?.rename(&from, &to, overwrite).await;
            done(r, json, &format!("renamed {from} to {to}"))
        }
        Command::Check { config } => check(&config).await,
    }
}

async fn device(config: &Path) -> anyhow::Result<Client> {
    let cfg = DeviceConfig::load(config)?;
    Ok(Client::connect(&cfg).await?)
}

/// A client for a transfer, verified with `hash` when given (else as device.toml says).
async fn transfer_client((config, hash): (&Path, Option<HashAlg>)) -> anyhow::Result<Client> {
    let mut client = device(config).await?;
    if let Some(h) = hash {
        client.set_hash(h);
    }
    Ok(client)
}

fn parse_hash(s: &str) -> Result<HashAlg, String> {
    s.parse().map_err(|e: mqsftp_proto::UnknownHashAlg| e.to_string())
}

/// What `get` and `put --json` print: the hash in a field named after its algorithm, as the protocol carries it.
fn outcome_json(path: &str, size: u64, digest: &Digest) -> serde_json::Value {
    serde_json::json!({ "path": path, "size": size, "hash": digest.alg.as_str(), digest.alg.as_str(): digest.hex() })
}

fn done(result: Result<(), DeviceError>, json: bool, what: &str) -> anyhow::Result<u8> {
    result?;
    if json {
        println!("{}", serde_json::json!({ "ok": true }));
    } else {
        println!("{what}");
    }
    Ok(exit::OK)
}

fn pki(cmd: PkiCommand) -> anyhow::Result<u8> {
    use mqsftp_pki::Passphrase;
    match cmd {
        PkiCommand::Init {
            dir,
            broker_hosts,
            broker_port,
            sftp_user,
            sftp_host,
            sftp_port,
            sftp_host_key,
            ca_days,
            cert_days,
            passphrase_file,
        } => {
            let opts = mqsftp_pki::InitOptions {
                dir,
                broker_hosts,
                broker_port,
                sftp_user,
                sftp_host,
                sftp_port,
                sftp_host_key,
                ca_days,
                cert_days,
                passphrase: Passphrase::from_file_or_env(passphrase_file.as_deref())?,
            };
            let report = mqsftp_pki::init(&opts)?;
            for f in &report.written {
                println!("wrote {}", f.display());
            }
            if opts.passphrase.is_some() {
                println!("ca.key is encrypted: `pki device` and `pki revoke` need the same passphrase");
            }
            println!("next: install the broker files (see the header of mosquitto.conf), append sshd_config to the SFTP server's, and run `mqsftp pki device ID --dir {}`", opts.dir.display());
        }
        PkiCommand::Device { id, dir, broker_host, broker_port, days, reissue, passphrase_file } => {
            let id = mqsftp_pki::parse_device_id(&id)?;
            let opts = mqsftp_pki::DeviceOptions {
                broker_host,
                broker_port,
                cert_days: days,
                passphrase: Passphrase::from_file_or_env(passphrase_file.as_deref())?,
                reissue,
            };
            let files = mqsftp_pki::issue_device(&dir, &id, &opts)?;
            if reissue {
                println!(
                    "re-issued {} and {}; the previous certificate is revoked",
                    files.cert.display(),
                    files.key.display()
                );
                println!(
                    "next: install {} on the broker and reload it (SIGHUP), copy the two files to the device",
                    dir.join("crl.pem").display()
                );
            } else {
                println!("wrote {} (copy this directory to the device)", files.dir.display());
                println!("try: mqsftp check --config {}", files.config.display());
            }
        }
        PkiCommand::Revoke { id, dir, reason, passphrase_file } => {
            let id = mqsftp_pki::parse_device_id(&id)?;
            let reason: mqsftp_pki::RevokeReason = reason.parse()?;
            let pass = Passphrase::from_file_or_env(passphrase_file.as_deref())?;
            let report = mqsftp_pki::revoke(&dir, &id, reason, pass.as_ref())?;
            for serial in &report.serials {
                println!("revoked {id} serial {serial}");
            }
            println!("wrote {} (CRL number {})", report.crl.display(), report.crl_number);
            println!("next: install it on the broker and reload Mosquitto (SIGHUP, `systemctl reload mosquitto`); until then it still accepts the certificate");
        }
        PkiCommand::EncryptKey { key, passphrase_file } => {
            let pass = Passphrase::from_file_or_env(passphrase_file.as_deref())?.with_context(|| {
                format!(
                    "no passphrase for {}: give --passphrase-file or set {}",
                    key.display(),
                    mqsftp_pki::PASSPHRASE_ENV
                )
            })?;
            mqsftp_pki::encrypt_key_file(&key, &pass)?;
            println!("encrypted {}", key.display());
        }
        PkiCommand::KnownHosts { host, port, hash, key } => {
            let line = mqsftp_pki::known_hosts_line_from_file(&host, port, &key)?;
            let line = if hash { mqsftp_pki::hash_known_hosts_line(&line)? } else { line };
            println!("{line}");
        }
    }
    Ok(exit::OK)
}

async fn gateway(cfg: Result<GatewayConfig, mqsftp_gateway::ConfigError>) -> anyhow::Result<u8> {
    let cfg = cfg?;
    let gw = Gateway::connect(cfg).await.context("gateway could not start")?;
    let _reload = reload_policy_on_sighup(gw.policy_reloader());
    gw.run(shutdown_signal()).await?;
    Ok(exit::OK)
}

/// Re-reads the policy file on every SIGHUP; a refused file is logged and the policy in force stays.
fn reload_policy_on_sighup(reloader: mqsftp_gateway::PolicyReloader) -> Option<tokio::task::JoinHandle<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP; the policy will not be reloaded");
                return None;
            }
        };
        Some(tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match reloader.reload() {
                    Ok(rules) => tracing::info!(rules, "policy reloaded"),
                    Err(e) => tracing::error!("policy reload refused, the previous policy stays in force: {e}"),
                }
            }
        }))
    }
    #[cfg(not(unix))]
    {
        let _ = reloader;
        None
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn progress_bar(quiet: bool, label: &str) -> Option<indicatif::ProgressBar> {
    (!quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(label.to_string());
        bar
    })
}

fn finish(bar: &Option<indicatif::ProgressBar>) {
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    mqsftp_gateway::policy::parse_size(s)
}

fn show(bar: &Option<indicatif::ProgressBar>, p: mqsftp_device::Progress) {
    if let Some(bar) = bar {
        bar.set_length(p.total);
        bar.set_position(p.done);
    }
}

async fn get(
    config: (&Path, Option<HashAlg>),
    remote: &str,
    local: Option<PathBuf>,
    quiet: bool,
    json: bool,
) -> anyhow::Result<u8> {
    let local = local.unwrap_or_else(|| PathBuf::from("."));
    let mut client = transfer_client(config).await?;
    let bar = progress_bar(quiet, remote);
    let result = client.get(remote, &local, |p| show(&bar, p)).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let o = result?;
    if json {
        println!("{}", outcome_json(&o.path.to_string_lossy(), o.size, &o.digest));
    } else {
        println!("{}: {} bytes, {} (verified)", o.path.display(), o.size, o.digest);
    }
    Ok(exit::OK)
}

async fn put(
    config: (&Path, Option<HashAlg>),
    local: &Path,
    remote: Option<String>,
    overwrite: bool,
    quiet: bool,
    json: bool,
) -> anyhow::Result<u8> {
    let remote = match remote {
        Some(r) => r,
        None => local
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("{} has no file name; give REMOTE", local.display()))?,
    };
    let mut client = transfer_client(config).await?;
    let bar = progress_bar(quiet, &remote);
    let result = client.put(local, &remote, overwrite, |p| show(&bar, p)).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let o = result?;
    if json {
        let mut out = outcome_json(&o.path, o.size, &o.digest);
        out["durable"] = o.durable.into();
        println!("{out}");
    } else {
        let durable = if o.durable { "" } else { " (the store could not fsync: not guaranteed durable)" };
        println!("{}: {} bytes, {} (committed){durable}", o.path, o.size, o.digest);
    }
    Ok(exit::OK)
}

async fn check(config: &Path) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(config).with_context(|| format!("cannot read {}", config.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("{} is not valid TOML", config.display()))?;
    let lines: Vec<(&str, Result<String, String>)> = if table.contains_key("device_id") {
        let cfg = DeviceConfig::load(config)?;
        println!("device {} ({})", cfg.device_id, config.display());
        mqsftp_device::check::check(&cfg).await.into_iter().map(|l| (l.name, l.result)).collect()
    } else if table.contains_key("sftp") {
        let cfg = GatewayConfig::load(config)?;
        println!("gateway ({})", config.display());
        mqsftp_gateway::check::check(&cfg).await.into_iter().map(|l| (l.name, l.result)).collect()
    } else {
        anyhow::bail!("{}: neither a device config (no device_id) nor a gateway config (no [sftp])", config.display());
    };
    let mut all = true;
    for (name, result) in &lines {
        match result {
            Ok(detail) => println!("pass  {name}: {detail}"),
            Err(reason) => {
                all = false;
                println!("FAIL  {name}: {reason}");
            }
        }
    }
    Ok(if all { exit::OK } else { exit::FAILURE })
}
