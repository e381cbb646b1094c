use std::time::Duration;

use rumqttc::{Event, EventLoop, Packet, QoS};

use mqsftp_broker::{MAX_INFLIGHT_IN, MAX_INFLIGHT_OUT, OUT_QUEUE};

use crate::support::{next_message, until_subacked, Pki, WAIT};

const SIZE: usize = 64 * 1024;

fn message(seq: u64) -> Vec<u8> {
    let mut payload = vec![0xa5u8; SIZE];
    payload[..8].copy_from_slice(&seq.to_be_bytes());
    payload
}

/// Polls a publisher's event loop until `count` PUBACKs arrived.
async fn count_pubacks(mut events: EventLoop, count: usize) -> usize {
    let mut acks = 0;
    while acks < count {
        match events.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => acks += 1,
            Ok(_) => {}
            Err(e) => panic!("publisher: {e}"),
        }
    }
    acks
}

/// Receives `count` messages, checking they arrive in sequence, sleeping `pause` after each.
async fn receive_in_order(events: &mut EventLoop, count: u64, pause: Duration) {
    let mut next = 0u64;
    while next < count {
        match events.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                assert_eq!(p.payload.len(), SIZE);
                let seq = u64::from_be_bytes(p.payload[..8].try_into().unwrap());
                assert_eq!(seq, next, "message {next} lost or out of order");
                next += 1;
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            Ok(_) => {}
            Err(e) => panic!("subscriber: {e} after {next} messages"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_qos1_subscriber_gets_every_message_in_order() {
    const COUNT: u64 = 1024;
    let pki = Pki::new();
    let broker = pki.start_broker().await;
    let addr = broker.local_addr();
    let (sub, mut sub_events) = pki.gateway().raw(addr, "gw");
    sub.subscribe("mqsftp/v1/d1/req", QoS::AtLeastOnce).await.unwrap();
    until_subacked(&mut sub_events, 1).await;
    let (publisher, pub_events) = pki.device("d1").raw(addr, "d1");
    let acks = tokio::spawn(count_pubacks(pub_events, COUNT as usize));
    let sending = tokio::spawn(async move {
        for seq in 0..COUNT {
            publisher.publish("mqsftp/v1/d1/req", QoS::AtLeastOnce, false, message(seq)).await.unwrap();
        }
    });
    // 64 MiB to a subscriber that takes a break after every message: the publisher must be held back, not dropped.
    tokio::time::timeout(WAIT * 3, receive_in_order(&mut sub_events, COUNT, Duration::from_micros(500)))
        .await
        .expect("subscriber timed out");
    sending.await.unwrap();
    assert_eq!(tokio::time::timeout(WAIT, acks).await.unwrap().unwrap(), COUNT as usize);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_stalls_the_publisher_and_loses_nothing() {
    const COUNT: u64 = 1200;
    let pki = Pki::new();
    let broker = pki.start_broker().await;
    let addr = broker.local_addr();
    let (sub, mut sub_events) = pki.gateway().raw(addr, "gw");
    sub.subscribe("mqsftp/v1/d1/req", QoS::AtLeastOnce).await.unwrap();
    until_subacked(&mut sub_events, 1).await;
    let (publisher, mut pub_events) = pki.device("d1").raw(addr, "d1");
    let sending = tokio::spawn(async move {
        for seq in 0..COUNT {
            publisher.publish("mqsftp/v1/d1/req", QoS::AtLeastOnce, false, message(seq)).await.unwrap();
        }
    });
    // The subscriber reads nothing now. Count PUBACKs until none came for a second: the broker must have stopped
    // acknowledging (it holds a bounded number of messages), long before all 75 MiB were sent.
    let mut acks = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(1), pub_events.poll()).await {
            Err(_) => break,
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acks += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("publisher: {e}"),
        }
        assert!(acks < COUNT as usize, "all {COUNT} messages were acknowledged while the subscriber read nothing");
    }
    println!("stalled after {acks} PUBACKs");
    // What the broker took from the publisher is what the subscriber's queue and in-flight window hold; the next
    // message waits in the publisher's connection, unacknowledged.
    assert!(acks <= OUT_QUEUE + MAX_INFLIGHT_OUT, "the broker took {acks} messages for a stalled subscriber");
    // Now the subscriber reads; everything arrives, and the publisher finishes.
    let acks_left = COUNT as usize - acks;
    let publisher_done = tokio::spawn(count_pubacks(pub_events, acks_left));
    tokio::time::timeout(WAIT * 2, receive_in_order(&mut sub_events, COUNT, Duration::ZERO))
        .await
        .expect("subscriber timed out");
    sending.await.unwrap();
    tokio::time::timeout(WAIT, publisher_done).await.unwrap().unwrap();
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_over_the_inflight_limit_is_disconnected() {
    let pki = Pki::new();
    let broker = pki.start_broker().await;
    let addr = broker.local_addr();
    let (sub, mut sub_events) = pki.gateway().raw(addr, "gw");
    sub.subscribe("mqsftp/v1/d1/req", QoS::AtLeastOnce).await.unwrap();
    until_subacked(&mut sub_events, 1).await;
    // The subscriber reads nothing from now on, so the broker stops acknowledging; a client that keeps more
    // than MAX_INFLIGHT_IN publishes unacknowledged is closed instead of being buffered for.
    let inflight = (MAX_INFLIGHT_IN + 72) as u16;
    let (publisher, mut pub_events) = pki.device("d1").raw_with(addr, "d1", |o| {
        o.set_inflight(inflight);
    });
    let count = OUT_QUEUE + MAX_INFLIGHT_OUT + usize::from(inflight) + 1;
    tokio::spawn(async move {
        for seq in 0..count as u64 {
            if publisher.publish("mqsftp/v1/d1/req", QoS::AtLeastOnce, false, message(seq)).await.is_err() {
                break;
            }
        }
    });
    let mut acks = 0;
    let error = tokio::time::timeout(WAIT, async {
        loop {
            match pub_events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acks += 1,
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the publisher was not disconnected");
    println!("publisher: {error} after {acks} PUBACKs");
    // Closed by the broker, at once: not the client giving up because the broker stopped reading (a connection that
    // ended with an error used to stay open while its queued messages waited for the stalled subscriber).
    assert!(!matches!(error, rumqttc::ConnectionError::FlushTimeout), "the broker stopped reading instead of closing");
    assert!(acks <= OUT_QUEUE + MAX_INFLIGHT_OUT);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_streaming_to_each_other_do_not_deadlock() {
    const COUNT: usize = 300;
    let pki = Pki::new();
    let broker = pki.start_broker().await;
    let addr = broker.local_addr();
    let mut gateway = pki.gateway().link(addr, "gw", &["mqsftp/v1/+/up/#"]).await.unwrap();
    let mut device = pki.device("d1").link(addr, "d1", &["mqsftp/v1/d1/down/#"]).await.unwrap();
    let (g, d) = (gateway.client.clone(), device.client.clone());
    let down = tokio::spawn(async move {
        for seq in 0..COUNT as u64 {
            g.publish("mqsftp/v1/d1/down/s", QoS::AtLeastOnce, false, message(seq)).await.unwrap();
        }
    });
    let up = tokio::spawn(async move {
        for seq in 0..COUNT as u64 {
            d.publish("mqsftp/v1/d1/up/g", QoS::AtLeastOnce, false, message(seq)).await.unwrap();
        }
    });
    let both = async {
        for seq in 0..COUNT as u64 {
            let at_device = next_message(&mut device).await;
            assert_eq!(at_device.payload[..8], seq.to_be_bytes());
        }
        for seq in 0..COUNT as u64 {
            let at_gateway = next_message(&mut gateway).await;
            assert_eq!(at_gateway.payload[..8], seq.to_be_bytes());
        }
    };
    tokio::time::timeout(WAIT * 2, both).await.expect("transfers stalled");
    down.await.unwrap();
    up.await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn a_packet_over_the_size_limit_closes_the_connection() {
    let pki = Pki::new();
    let broker = pki.start_broker().await;
    let addr = broker.local_addr();
    let mut gateway = pki.gateway().link(addr, "gw", &["mqsftp/v1/+/up/#"]).await.unwrap();
    let (client, mut events) = pki.device("d1").raw(addr, "d1");
    // A 1 MiB chunk (mqsftp's largest) passes.
    client.publish("mqsftp/v1/d1/up/g", QoS::AtLeastOnce, false, vec![1u8; 1 << 20]).await.unwrap();
    client
        .publish("mqsftp/v1/d1/up/g", QoS::AtLeastOnce, false, vec![2u8; mqsftp_broker::MAX_PACKET_SIZE])
        .await
        .unwrap();
    let error = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(e) = events.poll().await {
                return e;
            }
        }
    })
    .await
    .expect("an oversized packet was accepted");
    println!("publisher: {error}");
    assert_eq!(next_message(&mut gateway).await.payload.len(), 1 << 20);
    broker.shutdown().await;
    assert!(gateway.incoming.try_recv().is_err(), "the oversized message was delivered");
}

// The broker takes every packet mqsftp's clients may send, and nothing bigger than the gateway's client accepts
// (checked when the tests compile).
const _: () = assert!(mqsftp_broker::MAX_PACKET_SIZE == mqsftp_mqtt::MAX_PACKET_SIZE);
