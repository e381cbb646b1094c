use rumqttc::{Event, Packet, QoS};

use crate::support::{next_message, Pki, WAIT};

const GATEWAYS: &str = "$share/mqsftp-gateways/mqsftp/v1/+/req";

#[tokio::test]
async fn a_device_request_reaches_the_gateway_through_the_shared_subscription_and_the_answer_comes_back() {
    let pki = Pki::new();
    let broker = pki.start_broker().await;
    let addr = broker.local_addr();
    let mut gateway = pki.gateway().link(addr, "gw-1", &[GATEWAYS]).await.unwrap();
    let mut device = pki.device("d1").link(addr, "d1", &["mqsftp/v1/d1/res/s1"]).await.unwrap();

    device.client.publish("mqsftp/v1/d1/req", QoS::AtLeastOnce, false, "ping").await.unwrap();
    let request = next_message(&mut gateway).await;
    assert_eq!((request.topic.as_str(), &request.payload[..]), ("mqsftp/v1/d1/req", &b"ping"[..]));
    gateway.client.publish("mqsftp/v1/d1/res/s1", QoS::AtLeastOnce, false, "pong").await.unwrap();
    let answer = next_message(&mut device).await;
    assert_eq!((answer.topic.as_str(), &answer.payload[..]), ("mqsftp/v1/d1/res/s1", &b"pong"[..]));
    assert_eq!(answer.qos, QoS::AtLeastOnce);
    broker.shutdown().await;
}

#[tokio::test]
async fn members_of_a_shared_subscription_take_turns() {
    let pki = Pki::new();
    let broker = pki.start_broker().await;
    let addr = broker.local_addr();
    let gateway = pki.gateway();
    let mut first = gateway.link(addr, "gw-1", &[GATEWAYS]).await.unwrap();
    let mut second = gateway.link(addr, "gw-2", &[GATEWAYS]).await.unwrap();
    let device = pki.device("d1").link(addr, "d1", &[]).await.unwrap();
    for i in 0..10u8 {
        device.client.publish("mqsftp/v1/d1/req", QoS::AtLeastOnce, false, vec![i]).await.unwrap();
    }
    let mut got = (Vec::new(), Vec::new());
    for _ in 0..5 {
        got.0.push(next_message(&mut first).await.payload[0]);
        got.1.push(next_message(&mut second).await.payload[0]);
    }
    assert_eq!(got, (vec![0, 2, 4, 6, 8], vec![1, 3, 5, 7, 9]));
    assert!(first.incoming.try_recv().is_err() && second.incoming.try_recv().is_err(), "each message went to one");
    broker.shutdown().await;
}

#[tokio::test]
async fn a_new_connection_with_the_same_client_id_closes_the_old_one() {
    let pki = Pki::new();
    let broker = pki.start_broker().await;
    let addr = broker.local_addr();
    let d1 = pki.device("d1");
    let (_old_client, mut old) = d1.raw(addr, "d1");
    tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = old.poll().await.unwrap() {
                break;
            }
        }
    })
    .await
    .unwrap();
    let mut new = d1.link(addr, "d1", &["mqsftp/v1/d1/res/#"]).await.unwrap();
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(e) = old.poll().await {
                return e;
            }
        }
    })
    .await
    .expect("the old connection was not closed");
    println!("old connection: {closed}");
    // The new connection keeps its subscription.
    let gateway = pki.gateway().link(addr, "gw", &[]).await.unwrap();
    gateway.client.publish("mqsftp/v1/d1/res/x", QoS::AtLeastOnce, false, "still here").await.unwrap();
    assert_eq!(&next_message(&mut new).await.payload[..], b"still here");
    broker.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_connections_and_the_listener() {
    let pki = Pki::new();
    let broker = pki.start_broker().await;
    let addr = broker.local_addr();
    let mut device = pki.device("d1").link(addr, "d1", &[]).await.unwrap();
    tokio::time::timeout(WAIT, broker.shutdown()).await.expect("shutdown took too long");
    let reason = tokio::time::timeout(WAIT, device.closed()).await.expect("the client was not disconnected");
    println!("client: {reason}");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still listening after shutdown");
}
