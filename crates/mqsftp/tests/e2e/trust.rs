use std::time::Duration;

use mqsftp_device::{Client, DeviceConfig, DeviceError, MqttError};
use mqsftp_gateway::{Gateway, GatewayConfig, GatewayError, StoreError};
use mqsftp_mqtt::{LinkOptions, MqttLink};
use mqsftp_testkit::Stack;

use crate::support::*;

async fn connect_err(cfg: &DeviceConfig) -> MqttError {
    match tokio::time::timeout(LIMIT, Client::connect(cfg)).await.expect("in time") {
        Err(DeviceError::Mqtt(e)) => e,
        Err(e) => panic!("expected an MQTT error, got {e}"),
        Ok(_) => panic!("the broker accepted a client it must refuse"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_refuses_a_client_without_certificate() {
    let stack = Stack::start().unwrap();
    let cfg = DeviceConfig::load(&stack.certless_device("nocert").unwrap()).unwrap();
    let e = connect_err(&cfg).await;
    assert!(e.is_tls(), "refusal is reported as a TLS problem: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_refuses_a_certificate_from_another_ca() {
    let stack = Stack::start().unwrap();
    let cfg = DeviceConfig::load(&stack.foreign_device("intruder").unwrap()).unwrap();
    let e = connect_err(&cfg).await;
    assert!(e.is_tls(), "refusal is reported as a TLS problem: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_trusting_another_ca_refuses_the_broker() {
    let stack = Stack::start().unwrap();
    let mut cfg = DeviceConfig::load(&stack.device("d1").unwrap()).unwrap();
    // Trust the CA of another PKI instead of ours: the broker's certificate must not verify.
    let other = tempfile::tempdir().unwrap();
    mqsftp_pki::init(&mqsftp_pki::InitOptions { dir: other.path().join("pki"), ..Default::default() }).unwrap();
    cfg.broker.ca = other.path().join("pki/ca.crt");
    let e = connect_err(&cfg).await;
    assert!(e.is_tls(), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{}", stack.mqtt_port())), "{e}");
}

/// Mosquitto 2.0 answers an MQTT 3.1.1 SUBSCRIBE that its ACL denies with "granted" and then delivers nothing, so
/// what is checked is delivery: bob receives his message, alice (subscribed to the same topic) does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_never_receives_another_devices_messages() {
    let stack = Stack::start().unwrap();
    let alice = DeviceConfig::load(&stack.device("alice").unwrap()).unwrap();
    let bob = DeviceConfig::load(&stack.device("bob").unwrap()).unwrap();
    let gateway = GatewayConfig::load(stack.gateway_config()).unwrap();
    let topic = "mqsftp/v1/bob/down/s1".to_string();
    let link = |cfg: mqsftp_mqtt::BrokerConfig, id: &str, subs: Vec<String>| {
        let id = id.to_string();
        async move {
            let opts = LinkOptions {
                client_id: id,
                subscriptions: subs,
                connect_timeout: Duration::from_secs(10),
                reconnect: false,
                inflight: 8,
            };
            match MqttLink::connect(&cfg, opts).await {
                Ok(l) => Some(l),
                Err(MqttError::SubscriptionRefused { .. }) => None,
                Err(e) => panic!("{e}"),
            }
        }
    };
    let snoop = link(alice.broker.clone(), "alice-snoop", vec![topic.clone(), "mqsftp/v1/+/req".into()]).await;
    let mut bob = link(bob.broker.clone(), "bob", vec![topic.clone()]).await.expect("bob may read his own topic");
    let gw = link(gateway.broker.clone(), "gw", vec![]).await.expect("gateway connects");
    gw.client.publish(topic.clone(), mqsftp_mqtt::rumqttc::QoS::AtLeastOnce, false, b"for bob".to_vec()).await.unwrap();
    let got = tokio::time::timeout(LIMIT, bob.incoming.recv()).await.expect("bob gets his message").unwrap();
    assert_eq!(&got.payload[..], b"for bob");
    if let Some(mut snoop) = snoop {
        // Bob already has it; give the broker a bounded moment in which it would have delivered to alice too.
        let leaked = tokio::time::timeout(Duration::from_millis(500), snoop.incoming.recv()).await;
        assert!(leaked.is_err(), "alice received a message on bob's topic: {leaked:?}");
    }
}

async fn gateway_with_known_hosts(stack: &Stack, known_hosts: std::path::PathBuf) -> GatewayError {
    let mut cfg = GatewayConfig::load(stack.gateway_config()).unwrap();
    cfg.sftp.known_hosts = known_hosts;
    match tokio::time::timeout(LIMIT, Gateway::connect(cfg)).await.expect("in time") {
        Err(e) => e,
        Ok(_) => panic!("gateway accepted an SFTP server whose host key is not pinned"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_refuses_an_unknown_host_key() {
    let stack = Stack::start().unwrap();
    let empty = stack.pki_dir().join("empty_known_hosts");
    std::fs::write(&empty, "# nothing pinned\n").unwrap();
    let e = gateway_with_known_hosts(&stack, empty).await;
    let msg = e.to_string();
    assert!(matches!(e, GatewayError::Store(StoreError::UnknownHostKey { .. })), "{msg}");
    assert!(msg.contains(stack.sftp_host_key_fingerprint()), "names the fingerprint: {msg}");
    assert!(msg.contains(&format!("[127.0.0.1]:{}", stack.sftp_port())), "names the host: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_refuses_a_changed_host_key() {
    let stack = Stack::start().unwrap();
    let e = gateway_with_known_hosts(&stack, stack.wrong_known_hosts().unwrap()).await;
    let msg = e.to_string();
    assert!(matches!(e, GatewayError::Store(StoreError::ChangedHostKey { .. })), "{msg}");
    assert!(msg.contains(stack.sftp_host_key_fingerprint()), "names the fingerprint: {msg}");
}
