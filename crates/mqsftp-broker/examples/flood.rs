//! The issue's broker test: one QoS 1 publisher sends COUNT messages of SIZE bytes (default 16,384 × 64 KiB =
//! 1 GiB) to one QoS 1 subscriber through the embedded broker, over mutual TLS with PKI from `mqsftp-pki`. Prints
//! how many arrived (in order, sequence-checked), the throughput, and the broker's peak RSS. The broker runs in a
//! child process (this program started again with `--serve`), so that its RSS is its own.
//!
//! ```text
//! cargo run -p mqsftp-broker --example flood -- [--count N] [--size BYTES] [--delay-us MICROS]
//! ```
//! `--delay-us` makes the subscriber pause after each message, so that the publisher is faster than the subscriber
//! and the broker must hold it back.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mqsftp_broker::{Broker, BrokerSettings};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

struct Args {
    count: u64,
    size: usize,
    delay: Duration,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args> {
    let mut parsed = Args { count: 16_384, size: 64 * 1024, delay: Duration::ZERO };
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--count" => parsed.count = value()?.parse()?,
            "--size" => parsed.size = value()?.parse()?,
            "--delay-us" => parsed.delay = Duration::from_micros(value()?.parse()?),
            other => bail!("unknown argument {other}"),
        }
    }
    if parsed.size < 8 {
        bail!("--size must be at least 8 (the sequence number)");
    }
    Ok(parsed)
}

fn settings(dir: &std::path::Path) -> BrokerSettings {
    BrokerSettings {
        ca_cert: dir.join("ca.crt"),
        cert: dir.join("broker.crt"),
        key: dir.join("broker.key"),
        acl: dir.join("acl"),
    }
}

/// Child: serve on 127.0.0.1:0, print the port, stop when stdin closes.
async fn serve(dir: &str) -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let broker = Broker::start(listener, settings(std::path::Path::new(dir))).await?;
    println!("PORT {}", broker.local_addr().port());
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
    })
    .await?;
    broker.shutdown().await;
    Ok(())
}

fn client(dir: &std::path::Path, port: u16, id: &str, cert: &str, key: &str) -> Result<(AsyncClient, EventLoop)> {
    let config = mqsftp_mqtt::BrokerConfig {
        host: "127.0.0.1".into(),
        port,
        ca: dir.join("ca.crt"),
        cert: Some(dir.join(cert)),
        key: Some(dir.join(key)),
        client_id: None,
        keep_alive: Duration::from_secs(30),
        passphrase_file: None,
        passphrase_env: None,
    };
    let tls = mqsftp_mqtt::tls_config(&config)?;
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(mqsftp_mqtt::MAX_PACKET_SIZE, mqsftp_mqtt::MAX_PACKET_SIZE)
        .set_inflight(64)
        .set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::clone(&tls))));
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    let (client, mut events) = AsyncClient::new(opts, 64);
    events.set_network_options(network);
    Ok((client, events))
}

fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM in /proc/PID/status")?;
    Ok(line.split_whitespace().nth(1).context("bad VmHWM line")?.parse()?)
}

async fn flood(args: Args) -> Result<()> {
    let pki = tempfile::tempdir()?;
    mqsftp_pki::init(&mqsftp_pki::InitOptions { dir: pki.path().to_path_buf(), ..Default::default() })?;
    let device = mqsftp_pki::parse_device_id("d1")?;
    mqsftp_pki::issue_device(pki.path(), &device, &mqsftp_pki::DeviceOptions::default())?;

    let mut child = Command::new(std::env::current_exe()?)
        .arg("--serve")
        .arg(pki.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("no child stdout")?).read_line(&mut line)?;
    let port: u16 = line.trim().strip_prefix("PORT ").context("the broker did not print its port")?.parse()?;
    let baseline = peak_rss_kib(child.id())?;

    let (sub, mut sub_events) = client(pki.path(), port, "gw", "gateway.crt", "gateway.key")?;
    sub.subscribe("mqsftp/v1/d1/req", QoS::AtLeastOnce).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = sub_events.poll().await? {
            break;
        }
    }
    let (count, size, delay) = (args.count, args.size, args.delay);
    let receiver = tokio::spawn(async move {
        let (mut received, mut next, mut out_of_order) = (0u64, 0u64, 0u64);
        while received < count {
            match tokio::time::timeout(Duration::from_secs(30), sub_events.poll()).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    eprintln!("subscriber: {e}");
                    break;
                }
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let seq = u64::from_be_bytes(p.payload[..8].try_into().unwrap_or_default());
                    if seq != next {
                        out_of_order += 1;
                    }
                    next = seq + 1;
                    received += 1;
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                }
                Ok(Ok(_)) => {}
            }
        }
        (received, out_of_order)
    });
    let (publisher, mut pub_events) = client(pki.path(), port, "d1", "devices/d1/device.crt", "devices/d1/device.key")?;
    let acker = tokio::spawn(async move {
        let mut acks = 0u64;
        while acks < count {
            match pub_events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acks += 1,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("publisher: {e}");
                    break;
                }
            }
        }
        acks
    });
    let start = Instant::now();
    for seq in 0..count {
        let mut payload = vec![0u8; size];
        payload[..8].copy_from_slice(&seq.to_be_bytes());
        publisher.publish("mqsftp/v1/d1/req", QoS::AtLeastOnce, false, payload).await?;
    }
    let acks = acker.await?;
    let (received, out_of_order) = receiver.await?;
    let secs = start.elapsed().as_secs_f64();
    let peak = peak_rss_kib(child.id())?;
    drop(child.stdin.take());
    child.wait()?;

    let bytes = received as f64 * size as f64;
    println!(
        "messages     {count} x {size} B QoS 1 ({:.2} GiB), subscriber pause {delay:?}",
        count as f64 * size as f64 / (1u64 << 30) as f64
    );
    println!("acknowledged {acks}");
    println!("received     {received} (lost {}, out of order {out_of_order})", count - received);
    println!("time         {secs:.1} s, {:.1} MB/s", bytes / secs / 1e6);
    println!("broker RSS   peak {:.1} MiB (at start {:.1} MiB)", peak as f64 / 1024.0, baseline as f64 / 1024.0);
    if received != count || out_of_order != 0 {
        bail!("messages were lost or reordered");
    }
    Ok(())
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut args = std::env::args().skip(1);
    match args.next() {
        Some(flag) if flag == "--serve" => runtime.block_on(serve(&args.next().context("--serve needs the PKI dir")?)),
        first => runtime.block_on(flood(parse_args(first.into_iter().chain(args))?)),
    }
}
