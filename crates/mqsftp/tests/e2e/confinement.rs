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

/// A device over its concurrent-transfer limit gets `busy`; the transfer in progress is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_per_device_limit_is_busy() {
    use mqsftp_mqtt::{rumqttc::QoS, LinkOptions, MqttLink};
    use mqsftp_proto::{Request, Response, SessionId, Topic};

    let stack = start_stack();
    // One transfer per device.
    let path = stack.gateway_config();
    let mut t: toml::Table = std::fs::read_to_string(path).unwrap().parse().unwrap();
    let transfer = t.entry("transfer").or_insert(toml::Table::new().into()).as_table_mut().unwrap();
    transfer.insert("max_transfers_per_device".into(), 1.into());
    std::fs::write(path, toml::to_string(&t).unwrap()).unwrap();
    let gw = RunningGateway::start(&stack).await;
    let cfg = mqsftp_device::DeviceConfig::load(&stack.device("busy").unwrap()).unwrap();
    put_on_store(&stack, "busy", "big.bin", &content(4 * 1024 * 1024, 9));

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
        },
    )
    .await
    .unwrap();
    let get = Request::Get { id: "hold-1".into(), session: session.clone(), path: "big.bin".into(), offset: 0 };
    raw.client.publish(Topic::request(&device), QoS::AtLeastOnce, false, get.encode()).await.unwrap();
    loop {
        let p = tokio::time::timeout(LIMIT, raw.incoming.recv()).await.expect("answer in time").unwrap();
        if let Ok(Response::GetAccepted { .. }) = Response::decode(&p.payload) {
            break;
        }
    }

    let mut client = connect(&cfg).await;
    let out = tempfile::tempdir().unwrap();
    let err = client.get("big.bin", &out.path().join("x"), |_| {}).await.unwrap_err();
    let msg = err.to_string();
    assert_eq!(remote_code(err), ErrorCode::Busy, "{msg}");
    assert!(msg.contains("limit 1"), "names the limit: {msg}");
    assert!(entries(out.path()).is_empty());
    gw.stop().await;
}
