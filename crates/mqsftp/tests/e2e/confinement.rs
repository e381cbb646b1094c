use std::time::{Duration, Instant};

use mqsftp_device::ErrorCode;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_file_is_not_found_and_leaves_nothing() {
    let (_stack, gw, cfg) = setup("nf").await;
    let mut client = connect(&cfg).await;
    let out = tempfile::tempdir().unwrap();
    let err = client.get("no/such/file", &out.path().join("x"), |_| {}).await.unwrap_err();
    let msg = err.to_string();
    assert_eq!(remote_code(err), ErrorCode::NotFound);
    assert!(msg.contains("no/such/file"), "message names the path: {msg}");
    assert!(!msg.contains("devices/"), "message must not reveal the store layout: {msg}");
    assert!(entries(out.path()).is_empty(), "no partial file: {:?}", entries(out.path()));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escapes_are_denied_even_when_the_target_exists() {
    let (stack, gw, cfg) = setup("jail").await;
    // Another device's file and a file beside the device roots: both exist, neither may be read.
    put_on_store(&stack, "other", "secret.txt", b"not yours");
    std::fs::write(stack.store_dir().join("top.txt"), b"not yours either").unwrap();
    let mut client = connect(&cfg).await;
    let out = tempfile::tempdir().unwrap();
    let other_abs = stack.device_root("other").join("secret.txt");
    for path in
        ["../other/secret.txt", "../../top.txt", "a/../../other/secret.txt", "/etc/passwd", other_abs.to_str().unwrap()]
    {
        let err = client.get(path, &out.path().join("x"), |_| {}).await.unwrap_err();
        let msg = err.to_string();
        assert_eq!(remote_code(err), ErrorCode::PermissionDenied, "{path}: {msg}");
    }
    for path in ["bad\0name", "bad\nname"] {
        let err = client.get(path, &out.path().join("x"), |_| {}).await.unwrap_err();
        assert_eq!(remote_code(err), ErrorCode::BadRequest, "{path:?}");
    }
    std::fs::create_dir_all(stack.device_root("jail").join("subdir")).unwrap();
    let err = client.get("subdir", &out.path().join("x"), |_| {}).await.unwrap_err();
    assert_eq!(remote_code(err), ErrorCode::IsDirectory);
    assert!(entries(out.path()).is_empty());
    // A path that stays inside the root after normalising is fine.
    put_on_store(&stack, "jail", "ok.txt", b"fine");
    client.get("x/../ok.txt", &out.path().join("ok"), |_| {}).await.unwrap();
    assert_eq!(std::fs::read(out.path().join("ok")).unwrap(), b"fine");
    gw.stop().await;
}

/// A device over its concurrent-transfer limit gets `busy`; the transfer in progress is not disturbed. The device
/// library asks again after growing pauses: a get that stays refused for the whole transfer timeout fails with
/// `busy` naming the limit, leaving nothing; a get refused while another transfer runs completes once it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_per_device_limit_is_busy_until_a_transfer_ends() {
    use mqsftp_mqtt::{rumqttc::QoS, LinkOptions, MqttLink};
    use mqsftp_proto::{Request, Response, SessionId, Topic};

    let stack = start_stack();
    // One transfer per device.
    set_transfer_option(&stack, "max_transfers_per_device", 1.into());
    let gw = RunningGateway::start(&stack).await;
    let mut cfg = mqsftp_device::DeviceConfig::load(&stack.device("busy").unwrap()).unwrap();
    let data = content(4 * 1024 * 1024, 9);
    put_on_store(&stack, "busy", "big.bin", &data);

    // A raw client that asks for the file and never acknowledges: its transfer stays open.
    let session = SessionId::new("hold").unwrap();
    let device = cfg.device_id.clone();
    let mut raw = MqttLink::connect(
        &cfg.broker,
        LinkOptions {
            client_id: "busy-raw".into(),
            subscriptions: vec![Topic::response(&device, &session)],
            connect_timeout: LIMIT,
            reconnect: false,
            inflight: 8,
            queue: mqsftp_mqtt::LinkOptions::DEFAULT_QUEUE,
        },
    )
    .await
    .unwrap();
    let (id, path) = ("hold-1".into(), "big.bin".into());
    let get = Request::Get { id, session: session.clone(), path, offset: 0, hash: mqsftp_proto::HashAlg::Blake3 };
    raw.client.publish(Topic::request(&device), QoS::AtLeastOnce, false, get.encode()).await.unwrap();
    let (transfer, gateway) = loop {
        let p = tokio::time::timeout(LIMIT, raw.incoming.recv()).await.expect("answer in time").unwrap();
        if let Ok(Response::GetAccepted { transfer, gateway, .. }) = Response::decode(&p.payload) {
            break (transfer, gateway);
        }
    };

    // Refused for longer than the device's timeout: busy, after pausing and asking again for that long.
    cfg.transfer.timeout = Duration::from_secs(2);
    let mut client = connect(&cfg).await;
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = client.get("big.bin", &out.path().join("x"), |_| {}).await.unwrap_err();
    let waited = started.elapsed();
    let msg = err.to_string();
    assert_eq!(remote_code(err), ErrorCode::Busy, "{msg}");
    assert!(msg.contains("limit 1"), "names the limit: {msg}");
    assert!(waited >= Duration::from_secs(2) && waited < LIMIT, "asked again for the timeout: {waited:?}");
    assert!(entries(out.path()).is_empty());

    // Refused while the other transfer runs, then served when it ends.
    let later = tokio::spawn(async move {
        let r = client.get("big.bin", &out.path().join("y"), |_| {}).await;
        (r, out)
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!later.is_finished(), "the second get waits while the limit is reached");
    let cancel = Request::Cancel { transfer };
    raw.client.publish(Topic::direct(&device, &gateway), QoS::AtLeastOnce, false, cancel.encode()).await.unwrap();
    let (r, out) = tokio::time::timeout(LIMIT, later).await.expect("served in time").unwrap();
    let outcome = r.expect("the get completes once the transfer in progress has ended");
    assert_eq!(std::fs::read(&outcome.path).unwrap(), data);
    assert_eq!(entries(out.path()), vec!["y".to_string()]);
    gw.stop().await;
}
