//! `mqsftp check` for a device config.

use std::time::Duration;

use mqsftp_mqtt::probe_tls;

use crate::{Client, DeviceConfig};

/// One line of a check report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    /// What was checked.
    pub name: &'static str,
    /// `Ok(detail)` or `Err(reason)`.
    pub result: Result<String, String>,
}

/// Broker TLS, client certificate accepted with this device's topics, and a gateway answering on them.
pub async fn check(cfg: &DeviceConfig) -> Vec<CheckLine> {
    let mut lines = Vec::new();
    let broker = cfg.broker.address();
    let tls = probe_tls(&cfg.broker, Duration::from_secs(10)).await;
    let tls_ok = tls.is_ok();
    lines.push(CheckLine {
        name: "broker tls",
        result: tls
            .map(|_| {
                format!(
                    "{broker} presents a certificate signed by {}",
                    cfg.broker.ca.display()
                )
            })
            .map_err(|e| e.to_string()),
    });
    if !tls_ok {
        lines.push(CheckLine {
            name: "client certificate",
            result: Err("not tried: broker TLS failed".into()),
        });
        lines.push(CheckLine {
            name: "request topics",
            result: Err("not tried".into()),
        });
        return lines;
    }
    let mut client = match Client::connect(cfg).await {
        Ok(c) => {
            lines.push(CheckLine {
                name: "client certificate",
                result: Ok(format!(
                    "accepted as device {}; response topics granted",
                    cfg.device_id
                )),
            });
            c
        }
        Err(e) => {
            lines.push(CheckLine {
                name: "client certificate",
                result: Err(e.to_string()),
            });
            lines.push(CheckLine {
                name: "request topics",
                result: Err("not tried".into()),
            });
            return lines;
        }
    };
    let ping = client.ping().await;
    lines.push(CheckLine {
        name: "request topics",
        result: ping
            .map(|(rtt, v)| {
                format!(
                    "a gateway (protocol v{v}) answered a ping in {:.1} ms",
                    rtt.as_secs_f64() * 1e3
                )
            })
            .map_err(|e| e.to_string()),
    });
    lines
}
