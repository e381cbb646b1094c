//! `mqsftp`: the command line. Glue only: parse arguments, call the libraries, print one error with its causes,
//! return an exit code (see [`exit`]).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mqsftp_device::{Client, DeviceConfig, DeviceError, ErrorCode, MqttError};
use mqsftp_gateway::{Gateway, GatewayConfig};

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
  8  broker unreachable or refused the connection";

#[derive(Parser)]
#[command(name = "mqsftp", version, about = "Secure file transfer between IoT devices (MQTT) and SFTP storage", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create certificates, keys and server config files for a deployment.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Run the gateway: serve devices' requests from the SFTP store.
    Gateway {
        /// gateway.toml (written by `mqsftp pki init`).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Download REMOTE (relative to the device's root) to LOCAL, verified by SHA-256.
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
    },
    /// Print the known_hosts line that pins an SSH server's public host key.
    KnownHosts {
        /// The server's host name or IP as the gateway reaches it.
        #[arg(long)]
        host: String,
        /// The server's port.
        #[arg(long, default_value_t = 22)]
        port: u16,
        /// The server's public host key file.
        key: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(default_log_filter(&cli.command))
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code_of(&e))
        }
    }
}

fn default_log_filter(cmd: &Command) -> &'static str {
    match cmd {
        Command::Gateway { .. } => "info",
        _ => "warn",
    }
}

fn exit_code_of(e: &anyhow::Error) -> u8 {
    let Some(d) = e.downcast_ref::<DeviceError>() else {
        return exit::FAILURE;
    };
    match d {
        DeviceError::Remote {
            code: ErrorCode::NotFound,
            ..
        } => exit::NOT_FOUND,
        DeviceError::Remote {
            code: ErrorCode::PermissionDenied,
            ..
        } => exit::PERMISSION_DENIED,
        DeviceError::NoGateway { .. } | DeviceError::Stalled { .. } => exit::NO_GATEWAY,
        DeviceError::Integrity(_) => exit::VERIFY,
        DeviceError::Mqtt(m) if m.is_tls() => exit::TLS,
        DeviceError::Mqtt(MqttError::SubscriptionRefused { .. }) => exit::PERMISSION_DENIED,
        DeviceError::Mqtt(_) => exit::UNREACHABLE,
        _ => exit::FAILURE,
    }
}

async fn run(cmd: Command) -> anyhow::Result<u8> {
    match cmd {
        Command::Pki(p) => pki(p),
        Command::Gateway { config } => gateway(&config).await,
        Command::Get {
            config,
            remote,
            local,
            quiet,
        } => get(&config, &remote, local, quiet).await,
        Command::Check { config } => check(&config).await,
    }
}

fn pki(cmd: PkiCommand) -> anyhow::Result<u8> {
    match cmd {
        PkiCommand::Init {
            dir,
            broker_hosts,
            broker_port,
            sftp_user,
            sftp_host,
            sftp_port,
            sftp_host_key,
        } => {
            let opts = mqsftp_pki::InitOptions {
                dir,
                broker_hosts,
                broker_port,
                sftp_user,
                sftp_host,
                sftp_port,
                sftp_host_key,
                ..Default::default()
            };
            let report = mqsftp_pki::init(&opts)?;
            for f in &report.written {
                println!("wrote {}", f.display());
            }
            println!("next: install the broker files (see the header of mosquitto.conf), append sshd_config to the SFTP server's, and run `mqsftp pki device ID --dir {}`", opts.dir.display());
        }
        PkiCommand::Device {
            id,
            dir,
            broker_host,
            broker_port,
        } => {
            let id = mqsftp_pki::parse_device_id(&id)?;
            let opts = mqsftp_pki::DeviceOptions {
                broker_host,
                broker_port,
                ..Default::default()
            };
            let files = mqsftp_pki::issue_device(&dir, &id, &opts)?;
            println!(
                "wrote {} (copy this directory to the device)",
                files.dir.display()
            );
            println!("try: mqsftp check --config {}", files.config.display());
        }
        PkiCommand::KnownHosts { host, port, key } => {
            println!(
                "{}",
                mqsftp_pki::known_hosts_line_from_file(&host, port, &key)?
            );
        }
    }
    Ok(exit::OK)
}

async fn gateway(config: &Path) -> anyhow::Result<u8> {
    let cfg = GatewayConfig::load(config)?;
    let gw = Gateway::connect(cfg)
        .await
        .context("gateway could not start")?;
    gw.run(shutdown_signal()).await?;
    Ok(exit::OK)
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

async fn get(
    config: &Path,
    remote: &str,
    local: Option<PathBuf>,
    quiet: bool,
) -> anyhow::Result<u8> {
    let cfg = DeviceConfig::load(config)?;
    let local = local.unwrap_or_else(|| PathBuf::from("."));
    let mut client = Client::connect(&cfg).await?;
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(remote.to_string());
        bar
    });
    let result = client
        .get(remote, &local, |p| {
            if let Some(bar) = &bar {
                bar.set_length(p.total);
                bar.set_position(p.done);
            }
        })
        .await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let outcome = result?;
    println!(
        "{}: {} bytes, sha256 {} (verified)",
        outcome.path.display(),
        outcome.size,
        outcome.sha256
    );
    Ok(exit::OK)
}

async fn check(config: &Path) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read {}", config.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", config.display()))?;
    let lines: Vec<(&str, Result<String, String>)> = if table.contains_key("device_id") {
        let cfg = DeviceConfig::load(config)?;
        println!("device {} ({})", cfg.device_id, config.display());
        mqsftp_device::check::check(&cfg)
            .await
            .into_iter()
            .map(|l| (l.name, l.result))
            .collect()
    } else if table.contains_key("sftp") {
        let cfg = GatewayConfig::load(config)?;
        println!("gateway ({})", config.display());
        mqsftp_gateway::check::check(&cfg)
            .await
            .into_iter()
            .map(|l| (l.name, l.result))
            .collect()
    } else {
        anyhow::bail!(
            "{}: neither a device config (no device_id) nor a gateway config (no [sftp])",
            config.display()
        );
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
