//! Raw packets over TLS, to see the broker's exact answers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Identity, Pki, WAIT};

async fn tls(identity: &Identity, addr: SocketAddr) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = mqsftp_mqtt::tls_config(&identity.broker_config(addr)).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::from(addr.ip());
    tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap()
}

/// CONNECT with protocol `name`, `level`, clean session and `keep_alive` seconds, client id "c".
fn connect_packet(name: &str, level: u8, keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name.as_bytes());
    body.push(level);
    body.push(0b10);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if level == 5 {
        body.push(0); // no properties
    }
    body.extend_from_slice(&[0, 1, b'c']);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

async fn read_to_end(stream: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut got = Vec::new();
    // A TLS close without close_notify is an error to rustls; what was read before it is what matters.
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut got)).await.expect("the broker kept the connection");
    got
}

#[tokio::test]
async fn protocols_other_than_mqtt_3_1_1_get_connack_1() {
    let pki = Pki::new();
    let broker = pki.start_broker().await;
    let device = pki.device("d1");
    for (name, level) in [("MQTT", 5), ("MQIsdp", 3), ("MQTT", 3)] {
        let mut stream = tls(&device, broker.local_addr()).await;
        stream.write_all(&connect_packet(name, level, 30)).await.unwrap();
        assert_eq!(read_to_end(&mut stream).await, [0x20, 0x02, 0x00, 0x01], "{name} level {level}");
    }
    let mut stream = tls(&device, broker.local_addr()).await;
    stream.write_all(&connect_packet("MQTT", 4, 30)).await.unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(WAIT, stream.read_exact(&mut connack)).await.unwrap().unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_one_and_a_half_keepalives() {
    let pki = Pki::new();
    let broker = pki.start_broker().await;
    let mut stream = tls(&pki.device("d1"), broker.local_addr()).await;
    stream.write_all(&connect_packet("MQTT", 4, 1)).await.unwrap();
    let start = Instant::now();
    let got = read_to_end(&mut stream).await;
    let after = start.elapsed();
    assert_eq!(got, [0x20, 0x02, 0x00, 0x00], "only the CONNACK");
    assert!(after >= Duration::from_millis(1400) && after < Duration::from_secs(5), "closed after {after:?}");

    // A client that pings in time stays.
    let mut stream = tls(&pki.device("d2"), broker.local_addr()).await;
    stream.write_all(&connect_packet("MQTT", 4, 1)).await.unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        stream.write_all(&[0xc0, 0x00]).await.unwrap();
        let mut pong = [0u8; 2];
        tokio::time::timeout(WAIT, stream.read_exact(&mut pong)).await.unwrap().unwrap();
        assert_eq!(pong, [0xd0, 0x00]);
    }
    broker.shutdown().await;
}
