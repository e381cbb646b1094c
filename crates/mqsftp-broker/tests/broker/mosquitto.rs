use tokio::process::Command;

use crate::support::{require_tool, run, Pki};

/// `--cafile --cert --key -h 127.0.0.1 -p PORT` for an identity of `pki`.
fn tls_args(
    cmd: &mut Command,
    ca: &std::path::Path,
    cert_key: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    port: u16,
) {
    cmd.arg("--cafile").arg(ca);
    if let Some((cert, key)) = cert_key {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
}

#[tokio::test]
async fn mosquitto_sub_receives_what_mosquitto_pub_sends() {
    require_tool("mosquitto_sub");
    require_tool("mosquitto_pub");
    require_tool("stdbuf");
    let pki = Pki::new();
    let broker = pki.start_broker().await;
    let port = broker.local_addr().port();
    let gateway = pki.gateway();
    let device = pki.device("d1");

    // The subscriber waits for two messages (-C 2) at QoS 1; it says when its subscription is in place (-d prints
    // the SUBACK), so the publisher does not race it.
    // stdbuf: mosquitto_sub's stdout is block-buffered when it is a pipe.
    let mut sub = Command::new("stdbuf");
    sub.args(["-oL", "mosquitto_sub"]);
    tls_args(&mut sub, &gateway.ca, gateway.cert_key.as_ref(), port);
    sub.args(["-q", "1", "-t", "mqsftp/v1/+/req", "-C", "2", "-W", "20", "-v", "-d"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut sub = sub.spawn().unwrap();
    let mut out = tokio::io::BufReader::new(sub.stdout.take().unwrap());
    let mut seen = String::new();
    tokio::time::timeout(crate::support::WAIT, async {
        use tokio::io::AsyncBufReadExt;
        loop {
            let mut line = String::new();
            if out.read_line(&mut line).await.unwrap() == 0 {
                panic!("mosquitto_sub ended before subscribing: {seen}");
            }
            seen.push_str(&line);
            if line.contains("SUBACK") {
                break;
            }
        }
    })
    .await
    .expect("no SUBACK seen by mosquitto_sub");

    for qos in ["0", "1"] {
        let mut publisher = Command::new("mosquitto_pub");
        tls_args(&mut publisher, &device.ca, device.cert_key.as_ref(), port);
        publisher.args(["-q", qos, "-t", "mqsftp/v1/d1/req", "-m", &format!("hello at qos {qos}")]);
        let done = run(&mut publisher).await;
        assert!(done.status.success(), "mosquitto_pub: {}", String::from_utf8_lossy(&done.stderr));
    }
    // -C 2 ends the subscriber after the second message.
    let rest = tokio::time::timeout(crate::support::WAIT, async {
        let mut rest = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut out, &mut rest).await.unwrap();
        rest
    })
    .await
    .expect("mosquitto_sub did not end");
    for qos in ["0", "1"] {
        assert!(rest.contains(&format!("mqsftp/v1/d1/req hello at qos {qos}")), "mosquitto_sub printed: {seen}{rest}");
    }
    assert!(sub.wait().await.unwrap().success());
    broker.shutdown().await;
}

#[tokio::test]
async fn mosquitto_pub_without_a_certificate_is_refused() {
    require_tool("mosquitto_pub");
    let pki = Pki::new();
    let broker = pki.start_broker().await;
    let port = broker.local_addr().port();
    let mut publisher = Command::new("mosquitto_pub");
    tls_args(&mut publisher, &pki.path("ca.crt"), None, port);
    publisher.args(["-q", "1", "-t", "mqsftp/v1/d1/req", "-m", "anonymous"]);
    let done = run(&mut publisher).await;
    assert!(!done.status.success(), "mosquitto_pub without a certificate succeeded");
    // With the device's certificate the same command works.
    let device = pki.device("d1");
    let mut publisher = Command::new("mosquitto_pub");
    tls_args(&mut publisher, &device.ca, device.cert_key.as_ref(), port);
    publisher.args(["-q", "1", "-t", "mqsftp/v1/d1/req", "-m", "with certificate"]);
    let done = run(&mut publisher).await;
    assert!(done.status.success(), "mosquitto_pub: {}", String::from_utf8_lossy(&done.stderr));
    broker.shutdown().await;
}
