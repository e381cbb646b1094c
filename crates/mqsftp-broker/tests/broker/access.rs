use rumqttc::{QoS, SubscribeReasonCode};

use crate::support::{next_message, until_subacked, Pki};

#[tokio::test]
async fn a_device_cannot_publish_or_subscribe_on_another_devices_topics() {
    let pki = Pki::new();
    let broker = pki.start_broker().await;
    let addr = broker.local_addr();
    let d1 = pki.device("d1");
    pki.device("d2");
    let mut gateway = pki.gateway().link(addr, "gw", &["mqsftp/v1/+/req", "mqsftp/v1/+/res/#"]).await.unwrap();

    for foreign in ["mqsftp/v1/d2/res/#", "mqsftp/v1/+/res/#", "mqsftp/v1/#", "#", "mqsftp/v1/d1/req"] {
        let refused = d1.link(addr, "d1-sub", &[foreign]).await;
        assert!(
            matches!(refused, Err(mqsftp_mqtt::MqttError::SubscriptionRefused { .. })),
            "{foreign}: {:?}",
            refused.err()
        );
    }
    let device = d1.link(addr, "d1", &["mqsftp/v1/d1/res/#"]).await.unwrap();
    // Refused publishes are acknowledged but not delivered. One publisher's messages are routed in order, so the
    // gateway's first message tells whether any refused one got through.
    device.client.publish("mqsftp/v1/d2/req", QoS::AtLeastOnce, false, "forged").await.unwrap();
    device.client.publish("mqsftp/v1/d1/res/s", QoS::AtLeastOnce, false, "not writable").await.unwrap();
    device.client.publish("mqsftp/v1/d2/req", QoS::AtMostOnce, false, "forged qos0").await.unwrap();
    device.client.publish("mqsftp/v1/d1/req", QoS::AtLeastOnce, false, "own").await.unwrap();
    let got = next_message(&mut gateway).await;
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("mqsftp/v1/d1/req", &b"own"[..]));
    assert!(gateway.incoming.try_recv().is_err(), "nothing else arrived");
    broker.shutdown().await;
}

#[tokio::test]
async fn the_user_name_is_the_certificate_cn_whatever_connect_says() {
    let pki = Pki::new();
    let broker = pki.start_broker().await;
    // Device d1 claims to be the gateway in CONNECT; the ACL must still see user d1.
    let (client, mut events) = pki.device("d1").raw_with(broker.local_addr(), "d1", |o| {
        o.set_credentials("gateway", "secret");
    });
    client.subscribe("mqsftp/v1/+/req", QoS::AtLeastOnce).await.unwrap();
    client.subscribe("mqsftp/v1/d1/res/#", QoS::AtLeastOnce).await.unwrap();
    let codes = until_subacked(&mut events, 2).await;
    assert_eq!(codes, [SubscribeReasonCode::Failure, SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
    broker.shutdown().await;
}

#[tokio::test]
async fn clients_without_a_certificate_or_from_another_ca_are_refused() {
    let pki = Pki::new();
    let other = Pki::new();
    let broker = pki.start_broker().await;
    let addr = broker.local_addr();
    let no_cert = pki.anonymous().link(addr, "anon", &[]).await;
    assert!(no_cert.is_err(), "a client without certificate was let in");
    // A device of another deployment: its certificate is not signed by this CA (it trusts this broker's CA, so
    // only the broker's check can refuse it).
    let mut foreign = other.device("d1");
    foreign.ca = pki.path("ca.crt");
    let foreign = foreign.link(addr, "foreign", &[]).await;
    assert!(foreign.is_err(), "a certificate from another CA was let in");
    // The same client id with a certificate of this CA is welcome.
    pki.device("d1").link(addr, "foreign", &["mqsftp/v1/d1/res/#"]).await.unwrap();
    broker.shutdown().await;
}
