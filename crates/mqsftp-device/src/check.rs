//! `mqsftp check` for a device config.

use mqsftp_mqtt::check_broker_tls;
pub use mqsftp_mqtt::CheckLine;

use crate::{Client, DeviceConfig};

/// Broker TLS, client certificate accepted with this device's topics, and a gateway answering on them.
pub async fn check(cfg: &DeviceConfig) -> Vec<CheckLine> {
    let mut lines = Vec::new();
    let tls = check_broker_tls(&cfg.broker).await;
    let tls_ok = tls.result.is_ok();
    lines.push(tls);
    if !tls_ok {
        lines.push(CheckLine { name: "client certificate", result: Err("not tried: broker TLS failed".into()) });
        lines.push(CheckLine { name: "request topics", result: Err("not tried".into()) });
        return lines;
    }
    let mut client = match Client::connect(cfg).await {
        Ok(c) => {
            lines.push(CheckLine {
                name: "client certificate",
                result: Ok(format!("accepted as device {}; response topics granted", cfg.device_id)),
            });
            c
        }
        Err(e) => {
            lines.push(CheckLine { name: "client certificate", result: Err(e.to_string()) });
            lines.push(CheckLine { name: "request topics", result: Err("not tried".into()) });
            return lines;
        }
    };
    let ping = client.ping().await;
    lines.push(CheckLine {
        name: "request topics",
        result: ping
            .map(|(rtt, v)| format!("a gateway (protocol v{v}) answered a ping in {:.1} ms", rtt.as_secs_f64() * 1e3))
            .map_err(|e| e.to_string()),
    });
    lines
}
