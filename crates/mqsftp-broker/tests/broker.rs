//! Integration tests of the embedded broker: real TLS on a loopback port it was handed, PKI generated per test by
//! `mqsftp-pki`, rumqttc clients (through `mqsftp-mqtt` where convenient) and the Mosquitto command-line clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "broker/support.rs"]
mod support;

/// Who may connect, publish and subscribe: certificates, CN as user name, the generated ACL.
#[path = "broker/access.rs"]
mod access;

/// Routing: shared subscriptions (device → gateway), round robin, client id takeover, shutdown.
#[path = "broker/routing.rs"]
mod routing;

/// Flow control: zero loss to a slow QoS 1 subscriber, no deadlock between two publishers, packet size limit.
#[path = "broker/flow.rs"]
mod flow;

/// Protocol details checked on the wire: MQTT 5 refused with CONNACK 0x01, keepalive.
#[path = "broker/protocol.rs"]
mod protocol;

/// mosquitto_pub / mosquitto_sub against the broker.
#[path = "broker/mosquitto.rs"]
mod mosquitto;
