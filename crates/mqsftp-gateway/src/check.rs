//! `mqsftp check` for a gateway config: each step of what the gateway needs, reported separately.

use std::time::Duration;

pub use mqsftp_mqtt::CheckLine;
use mqsftp_mqtt::{check_broker_tls, LinkOptions, MqttLink};
use mqsftp_proto::Topic;
use tokio::io::AsyncWriteExt;

use crate::config::GatewayConfig;
use crate::store::{self, StoreError};

/// Runs every check against the broker and the store named in `cfg`. Later checks that depend on a failed one
/// are reported as not tried.
pub async fn check(cfg: &GatewayConfig) -> Vec<CheckLine> {
    let mut lines = Vec::new();
    let timeout = Duration::from_secs(10);
    let tls = check_broker_tls(&cfg.broker).await;
    let tls_ok = tls.result.is_ok();
    lines.push(tls);
    let link = if tls_ok {
        let r = MqttLink::connect(
            &cfg.broker,
            LinkOptions {
                client_id: format!("mqsftp-check-{:08x}", rand::random::<u32>()),
                subscriptions: vec![Topic::shared_requests_filter()],
                connect_timeout: timeout,
                reconnect: false,
                inflight: 8,
                queue: mqsftp_mqtt::LinkOptions::DEFAULT_QUEUE,
            },
        )
        .await;
        let line =
            r.as_ref().map(|_| format!("certificate accepted, subscribed to {}", Topic::shared_requests_filter()));
        lines.push(CheckLine { name: "broker client certificate", result: line.map_err(|e| e.to_string()) });
        r.ok()
    } else {
        lines.push(CheckLine { name: "broker client certificate", result: Err("not tried: broker TLS failed".into()) });
        None
    };
    drop(link);

    let sftp = cfg.sftp.host.clone() + ":" + &cfg.sftp.port.to_string();
    match store::connect(&cfg.sftp).await {
        Ok(session) => {
            lines.push(CheckLine {
                name: "sftp host key",
                result: Ok(format!("{sftp} host key is pinned in {}", cfg.sftp.known_hosts.display())),
            });
            lines.push(CheckLine {
                name: "sftp key auth",
                result: Ok(format!("logged in as {} with {}", cfg.sftp.user, cfg.sftp.key.display())),
            });
            lines.push(CheckLine { name: "sftp write+remove", result: probe_write(cfg, &session).await });
        }
        Err(e) => {
            let host_key_failed = matches!(
                e,
                StoreError::UnknownHostKey { .. } | StoreError::ChangedHostKey { .. } | StoreError::KnownHosts { .. }
            );
            let auth_failed = matches!(e, StoreError::AuthRefused { .. } | StoreError::Key { .. });
            if host_key_failed || !auth_failed {
                lines.push(CheckLine { name: "sftp host key", result: Err(e.to_string()) });
                lines.push(CheckLine { name: "sftp key auth", result: Err("not tried".into()) });
            } else {
                lines.push(CheckLine { name: "sftp host key", result: Ok(format!("{sftp} host key is pinned")) });
                lines.push(CheckLine { name: "sftp key auth", result: Err(e.to_string()) });
            }
            lines.push(CheckLine { name: "sftp write+remove", result: Err("not tried".into()) });
        }
    }
    lines
}

/// Writes and removes a probe file in the directory that holds the device roots.
async fn probe_write(cfg: &GatewayConfig, session: &store::StoreSession) -> Result<String, String> {
    let base = cfg.store.roots_dir();
    let probe = format!("{base}/.mqsftp-check-{:08x}", rand::random::<u32>());
    // A fresh store may not have the directory of device roots yet; the gateway creates it when needed, and so does
    // the check.
    let created =
        session.create_dir_all(base).await.map_err(|(dir, e)| format!("cannot create directory {dir}: {e}"))?;
    let mut f = session.create(probe.as_str()).await.map_err(|e| format!("cannot create {probe}: {e}"))?;
    f.write_all(b"mqsftp check\n").await.map_err(|e| format!("cannot write {probe}: {e}"))?;
    f.shutdown().await.map_err(|e| format!("cannot close {probe}: {e}"))?;
    session.remove_file(probe.as_str()).await.map_err(|e| format!("cannot remove {probe}: {e}"))?;
    if created.is_empty() {
        Ok(format!("wrote and removed {probe}"))
    } else {
        Ok(format!("created {}; wrote and removed {probe}", created.join(", ")))
    }
}
