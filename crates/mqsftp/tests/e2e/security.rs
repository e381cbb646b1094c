//! Issue 4's adversarial suite: the gateway policy, symlinks on the store, nasty names, a flood of malformed
//! messages, and a broker whose ACL was left wide open. Certificates and host keys are in `trust.rs`.

use std::time::{Duration, Instant};

use mqsftp_device::{DeviceConfig, ErrorCode};
use mqsftp_proto::{Chunk, Request, Response, Topic};

use crate::support::*;

fn load(stack: &mqsftp_testkit::Stack, id: &str) -> DeviceConfig {
    DeviceConfig::load(&stack.device(id).unwrap()).unwrap()
}

fn local_file(dir: &std::path::Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// Operations, roots, file size and quota per device, each refused with the reason and the rule that refused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_allows_denies_and_limits_per_device() {
    let stack = mqsftp_testkit::Stack::start().unwrap();
    set_policy(
        &stack,
        r#"
[default]
max_file_size = "1 MiB"

[[device]]
match = "reader-*"
allow = ["get", "ls"]
root = "shared/firmware"

[[device]]
match = "quota-1"
max_file_size = "2 MiB"
quota = "3 MiB"
"#,
    );
    let fw = content(300_000, 5);
    std::fs::create_dir_all(stack.store_dir().join("shared/firmware")).unwrap();
    std::fs::write(stack.store_dir().join("shared/firmware/fw.bin"), &fw).unwrap();
    let gw = RunningGateway::start(&stack).await;
    let dir = tempfile::tempdir().unwrap();

    // Readers share one read-only root.
    for id in ["reader-1", "reader-2"] {
        let mut c = connect(&load(&stack, id)).await;
        let out = dir.path().join(format!("{id}.bin"));
        c.get("fw.bin", &out, |_| {}).await.unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), fw);
        assert_eq!(c.list("").await.unwrap().len(), 1);
        let src = local_file(dir.path(), "small", b"hello");
        let denials = [
            c.put(&src, "fw.bin", true, |_| {}).await.map(|_| ()).unwrap_err(),
            c.remove("fw.bin").await.unwrap_err(),
            c.mkdir("new").await.unwrap_err(),
            c.rename("fw.bin", "x.bin", false).await.unwrap_err(),
        ];
        for (e, op) in denials.into_iter().zip(["put", "rm", "mkdir", "mv"]) {
            let msg = e.to_string();
            assert_eq!(remote_code(e), ErrorCode::PermissionDenied, "{op}: {msg}");
            assert!(msg.contains(&format!("operation {op} is not allowed for device {id}")), "{msg}");
            assert!(msg.contains("policy.toml line 6"), "names the rule: {msg}");
        }
    }
    assert_eq!(std::fs::read(stack.store_dir().join("shared/firmware/fw.bin")).unwrap(), fw, "firmware untouched");

    // The default rule: own root, every operation, the smaller size limit.
    let mut c = connect(&load(&stack, "plain")).await;
    let big = local_file(dir.path(), "big", &content(1_100_000, 6));
    let e = c.put(&big, "big.bin", false, |_| {}).await.unwrap_err();
    let msg = e.to_string();
    assert_eq!(remote_code(e), ErrorCode::TooLarge, "{msg}");
    assert!(msg.contains("limit is 1048576"), "{msg}");
    let ok = local_file(dir.path(), "ok", &content(100_000, 7));
    c.put(&ok, "ok.bin", false, |_| {}).await.unwrap();
    assert!(stack.device_root("plain").join("ok.bin").exists());

    // The quota counts what is stored: two 1.5 MiB files fit in 3 MiB, a third does not.
    let mut q = connect(&load(&stack, "quota-1")).await;
    let part = local_file(dir.path(), "q", &content(1_500_000, 8));
    q.put(&part, "a.bin", false, |_| {}).await.unwrap();
    q.put(&part, "b/c.bin", false, |_| {}).await.unwrap();
    let e = q.put(&part, "c.bin", false, |_| {}).await.unwrap_err();
    let msg = e.to_string();
    assert_eq!(remote_code(e), ErrorCode::QuotaExceeded, "{msg}");
    assert!(msg.contains("quota of 3145728 bytes") && msg.contains("3000000 stored"), "{msg}");
    assert!(!stack.device_root("quota-1").join("c.bin").exists());
    // Freeing space lets the upload through.
    q.remove("a.bin").await.unwrap();
    q.put(&part, "c.bin", false, |_| {}).await.unwrap();
    assert!(part_files(stack.store_dir()).is_empty(), "{:?}", part_files(stack.store_dir()));
    gw.stop().await;
}

/// A device's transfers are paced to its rate; others are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_paces_a_device() {
    let stack = mqsftp_testkit::Stack::start().unwrap();
    set_policy(&stack, "[[device]]\nmatch = \"slow\"\nrate = \"1 MiB\"\n");
    let data = content(3 << 20, 9);
    put_on_store(&stack, "slow", "f.bin", &data);
    put_on_store(&stack, "fast", "f.bin", &data);
    let gw = RunningGateway::start(&stack).await;
    let dir = tempfile::tempdir().unwrap();

    let mut slow = connect(&load(&stack, "slow")).await;
    let started = Instant::now();
    slow.get("f.bin", &dir.path().join("s"), |_| {}).await.unwrap();
    let get_took = started.elapsed();
    // 3 MiB at 1 MiB/s with one second of burst: at least 2 s.
    assert!(get_took >= Duration::from_millis(1900), "rate-limited get took {get_took:?}");
    assert_eq!(sha256_file(&dir.path().join("s")), sha256(&data));

    let src = local_file(dir.path(), "up", &data);
    let started = Instant::now();
    slow.put(&src, "up.bin", false, |_| {}).await.unwrap();
    let put_took = started.elapsed();
    assert!(put_took >= Duration::from_millis(1900), "rate-limited put took {put_took:?}");

    let mut fast = connect(&load(&stack, "fast")).await;
    let started = Instant::now();
    fast.get("f.bin", &dir.path().join("f"), |_| {}).await.unwrap();
    let fast_took = started.elapsed();
    assert!(fast_took < get_took, "an unlimited device is not paced: {fast_took:?} vs {get_took:?}");
    eprintln!("rate 1 MiB/s, 3 MiB: get {get_took:?}, put {put_took:?}; unlimited device get {fast_took:?}");
    gw.stop().await;
}

/// SIGHUP re-reads the policy: a transfer in progress finishes, new requests follow the new policy, and a bad file
/// is refused with its line while the policy in force stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reloads_on_sighup_without_dropping_transfers() {
    let stack = mqsftp_testkit::Stack::start().unwrap();
    // The rate keeps the first transfer running while the policy changes under it.
    let policy = set_policy(&stack, "[default]\nrate = \"2 MiB\"\n");
    let data = content(6 << 20, 10);
    put_on_store(&stack, "hup", "f.bin", &data);
    let gw = GatewayProcess::spawn(&stack).await;
    let cfg = load(&stack, "hup");
    let dir = tempfile::tempdir().unwrap();

    let running = {
        let cfg = cfg.clone();
        let out = dir.path().join("running");
        tokio::spawn(async move {
            let mut c = connect(&cfg).await;
            let r = c.get("f.bin", &out, |_| {}).await;
            (r, out)
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    std::fs::write(&policy, "[default]\nallow = [\"ls\"]\n").unwrap();
    gw.hangup();
    gw.wait_for_log("policy reloaded").await;

    let mut c = connect(&cfg).await;
    let e = c.get("f.bin", &dir.path().join("new"), |_| {}).await.unwrap_err();
    assert_eq!(remote_code(e), ErrorCode::PermissionDenied);
    assert_eq!(c.list("").await.unwrap().len(), 1, "ls is still allowed");

    let (r, out) = tokio::time::timeout(LIMIT, running).await.unwrap().unwrap();
    r.expect("the transfer that started before the reload completes");
    assert_eq!(sha256_file(&out), sha256(&data));

    // A broken file: refused with the line, the previous policy stays.
    std::fs::write(&policy, "[default]\nallow = [\"get\"]\n\n[[device]]\nmatch = \"hup\"\nallow = [\"teleport\"]\n")
        .unwrap();
    gw.hangup();
    let line = gw.wait_for_log("policy reload refused").await;
    assert!(line.contains("line 6") && line.contains("teleport"), "{line}");
    let e = c.get("f.bin", &dir.path().join("again"), |_| {}).await.unwrap_err();
    assert_eq!(remote_code(e), ErrorCode::PermissionDenied, "the previous policy (ls only) still applies");
    gw.kill().await;
}

/// Symlinks placed on the store by someone else never lead a device out of its root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_out_of_the_root_are_refused() {
    use std::os::unix::fs::symlink;
    let (stack, gw, cfg) = setup("links").await;
    let root = stack.device_root("links");
    put_on_store(&stack, "links", "real/data.bin", b"inside");
    put_on_store(&stack, "victim", "secret.txt", b"not yours");
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("loot.txt"), b"outside").unwrap();
    symlink(outside.path(), root.join("out-dir")).unwrap();
    symlink(outside.path().join("loot.txt"), root.join("out-file")).unwrap();
    symlink("../victim", root.join("sibling")).unwrap();
    symlink(outside.path().join("missing"), root.join("dangling")).unwrap();
    symlink("real/data.bin", root.join("alias")).unwrap();
    let mut c = connect(&cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let src = local_file(dir.path(), "src", b"payload");

    for path in ["out-file", "out-dir/loot.txt", "sibling/secret.txt"] {
        let e = c.get(path, &dir.path().join("x"), |_| {}).await.unwrap_err();
        let msg = e.to_string();
        assert_eq!(remote_code(e), ErrorCode::PermissionDenied, "get {path}: {msg}");
        assert!(msg.contains("outside the device root"), "{msg}");
        let e = c.stat(path).await.unwrap_err();
        assert_eq!(remote_code(e), ErrorCode::PermissionDenied, "stat {path}");
    }
    for path in ["out-dir", "sibling"] {
        assert_eq!(remote_code(c.list(path).await.unwrap_err()), ErrorCode::PermissionDenied, "ls {path}");
    }
    for path in ["out-dir/planted.txt", "sibling/planted.txt", "dangling", "out-dir/new/deep.txt"] {
        let e = c.put(&src, path, true, |_| {}).await.unwrap_err();
        assert_eq!(remote_code(e), ErrorCode::PermissionDenied, "put {path}");
    }
    assert_eq!(remote_code(c.mkdir("out-dir/made").await.unwrap_err()), ErrorCode::PermissionDenied);
    assert_eq!(remote_code(c.rename("alias", "out-dir/moved", false).await.unwrap_err()), ErrorCode::PermissionDenied);
    assert_eq!(remote_code(c.remove("sibling/secret.txt").await.unwrap_err()), ErrorCode::PermissionDenied);
    // Nothing was written or removed outside.
    assert_eq!(entries(outside.path()), vec!["loot.txt".to_string()]);
    assert_eq!(std::fs::read(stack.device_root("victim").join("secret.txt")).unwrap(), b"not yours");
    assert!(!outside.path().join("missing").exists());

    // A link that stays inside is followed; removing a link removes only the link.
    c.get("alias", &dir.path().join("alias"), |_| {}).await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("alias")).unwrap(), b"inside");
    c.remove("out-file").await.unwrap();
    assert!(outside.path().join("loot.txt").exists(), "the target of a removed link stays");
    gw.stop().await;
}

/// A device root that is itself a symlink (the store's layout, the administrator's choice) serves as any root, and
/// links inside it are judged by where the root really is: the check resolves the root when a real path differs
/// from the path as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_reached_through_a_symlink_serves_and_confines() {
    use std::os::unix::fs::symlink;
    let (stack, gw, cfg) = setup("aliased").await;
    let root = stack.device_root("aliased");
    let real = stack.device_root("aliased-real");
    std::fs::create_dir_all(&real).unwrap();
    if root.exists() {
        std::fs::remove_dir_all(&root).unwrap();
    }
    symlink(&real, &root).unwrap();
    std::fs::write(real.join("inside.bin"), b"inside").unwrap();
    put_on_store(&stack, "victim", "secret.txt", b"not yours");
    symlink("..", real.join("up")).unwrap();
    symlink("inside.bin", real.join("alias")).unwrap();
    let mut c = connect(&cfg).await;
    let dir = tempfile::tempdir().unwrap();

    for (path, want) in [("inside.bin", &b"inside"[..]), ("alias", b"inside")] {
        c.get(path, &dir.path().join(path), |_| {}).await.unwrap_or_else(|e| panic!("get {path}: {e}"));
        assert_eq!(std::fs::read(dir.path().join(path)).unwrap(), want, "{path}");
    }
    let src = local_file(dir.path(), "src", b"payload");
    c.put(&src, "new/deep.bin", false, |_| {}).await.unwrap();
    assert_eq!(std::fs::read(real.join("new/deep.bin")).unwrap(), b"payload");
    let mut names: Vec<String> = c.list("").await.unwrap().into_iter().map(|e| e.name).collect();
    names.sort();
    assert_eq!(names, ["alias", "inside.bin", "new", "up"]);
    // `up` leads to the directory of all roots: out, except where it comes back into the real root.
    let e = c.get("up/victim/secret.txt", &dir.path().join("x"), |_| {}).await.unwrap_err();
    assert_eq!(remote_code(e), ErrorCode::PermissionDenied, "get through the link");
    assert_eq!(remote_code(c.stat("up").await.unwrap_err()), ErrorCode::PermissionDenied, "stat the link");
    c.get("up/aliased-real/inside.bin", &dir.path().join("back"), |_| {}).await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("back")).unwrap(), b"inside");
    let e = c.put(&src, "up/victim/planted.txt", false, |_| {}).await.unwrap_err();
    assert_eq!(remote_code(e), ErrorCode::PermissionDenied, "put through the link");
    assert!(!stack.device_root("victim").join("planted.txt").exists());
    gw.stop().await;
}

/// Names up to 255 bytes with spaces, CJK, emoji and `%` survive put, ls, stat and get unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nasty_names_round_trip() {
    let (stack, gw, cfg) = setup("names").await;
    let mut c = connect(&cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let names = vec![
        "with space.txt".to_string(),
        "日本語のファイル.bin".to_string(),
        "rocket 🚀 launch.dat".to_string(),
        "100% done %20 %s %n.txt".to_string(),
        "+#$&'()[]{}!@~^=,;.txt".to_string(),
        "a".repeat(255),
        "界".repeat(85), // 255 bytes
        format!("{}🚀", "e".repeat(251)),
        "dir with space/子ディレクトリ/file".to_string(),
    ];
    for (i, name) in names.iter().enumerate() {
        let data = content(70_000 + i, i as u64 + 40);
        let src = local_file(dir.path(), &format!("src{i}"), &data);
        c.put(&src, name, false, |_| {}).await.unwrap_or_else(|e| panic!("put {name:?}: {e}"));
        let stored = stack.device_root("names").join(name);
        assert_eq!(std::fs::read(&stored).unwrap(), data, "stored as {name:?}");
        let entry = c.stat(name).await.unwrap();
        assert_eq!(entry.size, data.len() as u64);
        let local_name = name.rsplit('/').next().unwrap();
        let back = dir.path().join(local_name);
        c.get(name, &back, |_| {}).await.unwrap_or_else(|e| panic!("get {name:?}: {e}"));
        assert_eq!(std::fs::read(&back).unwrap(), data, "{name:?} came back");
    }
    let listed: Vec<String> = c.list("").await.unwrap().into_iter().map(|e| e.name).collect();
    for name in names.iter().filter(|n| !n.contains('/')) {
        assert!(listed.contains(name), "{name:?} listed in {listed:?}");
    }
    // One byte more than a name may have is refused, and so is a name with a control character.
    let src = local_file(dir.path(), "small", b"x");
    let e = c.put(&src, &"b".repeat(256), false, |_| {}).await.unwrap_err();
    assert_eq!(remote_code(e), ErrorCode::BadRequest);
    let e = c.put(&src, "tab\there", false, |_| {}).await.unwrap_err();
    assert_eq!(remote_code(e), ErrorCode::BadRequest);
    assert!(part_files(stack.store_dir()).is_empty());
    gw.stop().await;
}

/// The malformed messages of the flood, in rotation. Each gets exactly one answer: on the session when the gateway
/// can read one, else on the device's errors topic.
fn malformed(i: usize, gateway: &mqsftp_proto::GatewayId, device: &mqsftp_proto::DeviceId) -> (String, Vec<u8>) {
    let req = Topic::request(device);
    let s = |body: &str| format!(r#"{{"id":"m{i}","session":"flood",{body}}}"#).into_bytes();
    match i % 16 {
        0 => (req, br#"{"op":"get","id":"#.to_vec()),
        1 => (req, b"[1,2,3]".to_vec()),
        2 => (req, Vec::new()),
        3 => (req, s(r#""op":"get","path":5"#)),
        4 => (req, s(r#""op":"chmod","path":"a""#)),
        5 => (req, s(r#""op":"get","path":"a","offset":-1"#)),
        6 => (req, s(r#""op":"get","path":"a","offset":18446744073709551616"#)),
        7 => (req, s(&format!(r#""op":"get","path":"{}""#, "p".repeat(5000)))),
        8 => (req, vec![b'{'; 20_000]),
        9 => (req, format!(r#"{{"id":"{}","session":"flood","op":"ping"}}"#, "i".repeat(100)).into_bytes()),
        10 => (req, s(r#""op":"put","path":"a","size":1,"sha256":"xyz""#)),
        11 => (req, s(r#""op":"commit","transfer":424242"#)),
        12 => (Topic::direct(device, gateway), br#"{"op":"ack","transfer":99,"next":5}"#.to_vec()),
        13 => {
            let c = Chunk { transfer: 77, offset: 0, data: bytes::Bytes::from_static(b"unknown transfer") };
            (Topic::up(device, gateway), c.encode().to_vec())
        }
        14 => {
            // More data than a chunk may carry (the first ten times), or than an upload's chunk size.
            let len = if i < 16 * 10 { mqsftp_proto::chunk::MAX_CHUNK_DATA + 1 } else { 70_000 };
            let c = Chunk { transfer: 78, offset: 0, data: bytes::Bytes::from(vec![0u8; len]) };
            (Topic::up(device, gateway), c.encode().to_vec())
        }
        _ => {
            let mut bytes =
                Chunk { transfer: 79, offset: 0, data: bytes::Bytes::from_static(b"bad crc") }.encode().to_vec();
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            (Topic::up(device, gateway), bytes)
        }
    }
}

/// 10,000 malformed messages, every one answered with a reason code, while another device downloads at the same
/// time; the flooding device is still served afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_flood_is_answered_while_others_are_served() {
    const N: usize = 10_000;
    let (stack, gw, cfg) = setup("flood").await;
    let data = content(20 << 20, 11);
    put_on_store(&stack, "bystander", "f.bin", &data);
    let bystander = {
        let cfg = load(&stack, "bystander");
        let out = tempfile::tempdir().unwrap();
        tokio::spawn(async move {
            let mut c = connect(&cfg).await;
            let target = out.path().join("f.bin");
            c.get("f.bin", &target, |_| {}).await.map(|_| sha256_file(&target))
        })
    };
    let mut raw = RawDevice::connect_with(&cfg, "flood", vec![Topic::errors(&cfg.device_id)]).await;
    let sender = {
        let client = raw.link.client.clone();
        let (gateway, device) = (gw.id.clone(), cfg.device_id.clone());
        tokio::spawn(async move {
            for i in 0..N {
                let (topic, payload) = malformed(i, &gateway, &device);
                client.publish(topic, mqsftp_mqtt::rumqttc::QoS::AtLeastOnce, false, payload).await.unwrap();
            }
        })
    };
    let mut by_code = std::collections::BTreeMap::<String, usize>::new();
    let (mut on_session, mut on_errors) = (0, 0);
    let started = Instant::now();
    while on_session + on_errors < N {
        let p = tokio::time::timeout(LIMIT, raw.link.incoming.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {N} answered", on_session + on_errors))
            .unwrap();
        match Response::decode(&p.payload).expect("answers are responses") {
            Response::Error { code, message, .. } => {
                assert!(!message.is_empty());
                *by_code.entry(code.as_str().to_string()).or_default() += 1;
                if p.topic == Topic::errors(&cfg.device_id) {
                    on_errors += 1;
                } else {
                    on_session += 1;
                }
            }
            other => panic!("a malformed message got {other:?}"),
        }
    }
    sender.await.unwrap();
    let took = started.elapsed();
    // 8 of the 16 kinds carry a readable session.
    assert_eq!(on_session, (0..N).filter(|i| matches!(i % 16, 3..=7 | 9..=11)).count(), "{by_code:?}");
    assert_eq!(by_code.get("bad_request"), Some(&N), "{by_code:?}");
    assert_eq!(gw.stats.rejected.load(std::sync::atomic::Ordering::Relaxed), on_errors as u64);
    let sha = tokio::time::timeout(LIMIT, bystander).await.unwrap().unwrap().expect("the bystander's get succeeds");
    assert_eq!(sha, sha256(&data));
    // Nothing more trickles in, and the flooding device itself is still served.
    raw.send(&Request::Ping { id: "after".into(), session: raw.session.clone() }).await;
    raw.expect(|r| match r {
        Response::Pong { id, .. } if id == "after" => Some(()),
        Response::Error { message, .. } => panic!("unexpected extra answer: {message}"),
        _ => None,
    })
    .await;
    eprintln!("{N} malformed messages: {on_session} answered on the session, {on_errors} on the errors topic, in {took:?}; {by_code:?}");
    gw.stop().await;
}

/// A message bigger than the broker's packet limit disconnects its sender at the broker; it never reaches the
/// gateway (whose client would drop its connection over it), which keeps its one connection and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_packet_disconnects_only_its_sender() {
    let (stack, gw, _cfg) = setup("huge").await;
    let dev_dir = stack.pki_dir().join("devices/huge");
    let big = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(big.path(), vec![0u8; 2 << 20]).unwrap();
    let topic = Topic::up(&mqsftp_proto::DeviceId::new("huge").unwrap(), &gw.id);
    let out = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &stack.mqtt_port().to_string(), "-q", "1", "-t", &topic])
        .arg("--cafile")
        .arg(dev_dir.join("ca.crt"))
        .arg("--cert")
        .arg(dev_dir.join("device.crt"))
        .arg("--key")
        .arg(dev_dir.join("device.key"))
        .arg("-f")
        .arg(big.path())
        .output()
        .unwrap();
    eprintln!("mosquitto_pub: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
    stack.wait_for_broker_log("huge", LIMIT).unwrap();
    // The gateway still serves, on the connection it had: the broker saw exactly one gateway connect.
    put_on_store(&stack, "other", "f.bin", b"still here");
    let mut c = connect(&load(&stack, "other")).await;
    let dir = tempfile::tempdir().unwrap();
    c.get("f.bin", &dir.path().join("f"), |_| {}).await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"still here");
    assert_eq!(gw.stats.rejected.load(std::sync::atomic::Ordering::Relaxed), 0, "nothing reached the gateway");
    let log = stack.broker_log();
    let gateway_connects =
        log.lines().filter(|l| l.contains("New client connected") && l.contains("as mqsftp-gateway")).count();
    assert_eq!(gateway_connects, 1, "the gateway never reconnected:\n{log}");
    gw.stop().await;
}

/// With the broker's ACL deliberately opened to everyone, the gateway still lets no device steer another
/// device's transfer from its own topics, and ignores any device id in a payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_checks_hold_with_a_permissive_acl() {
    let mut stack = mqsftp_testkit::Stack::start().unwrap();
    std::fs::write(
        stack.pki_dir().join("acl"),
        "# deliberately wrong: everyone may do anything\npattern readwrite #\n",
    )
    .unwrap();
    stack.kill_broker().unwrap();
    stack.start_broker().unwrap();
    // Bob is rate-limited so that his download is still running while Alice attacks it.
    set_policy(&stack, "[[device]]\nmatch = \"bob\"\nrate = \"1 MiB\"\n");
    let gw = RunningGateway::start(&stack).await;
    let data = content(3 << 20, 12);
    put_on_store(&stack, "bob", "f.bin", &data);
    let (alice, bob) = (load(&stack, "alice"), load(&stack, "bob"));

    // Alice can read Bob's responses (the ACL lets her), so she learns his transfer id and gateway.
    let bob_responses = "mqsftp/v1/bob/res/+".to_string();
    let mut a = RawDevice::connect_with(&alice, "alices", vec![Topic::errors(&alice.device_id), bob_responses]).await;
    let out = tempfile::tempdir().unwrap();
    let bobs_get = {
        let target = out.path().join("f");
        tokio::spawn(async move {
            let mut c = connect(&bob).await;
            c.get("f.bin", &target, |_| {}).await.map(|_| sha256_file(&target))
        })
    };
    let (transfer, gateway) = a
        .expect(|r| match r {
            Response::GetAccepted { transfer, gateway, .. } => Some((transfer, gateway)),
            _ => None,
        })
        .await;

    // From her own topics she tries to cancel, ack and commit Bob's transfer and to feed it data: each is refused.
    a.send_to(&gateway, &Request::Cancel { transfer }).await;
    a.send_to(&gateway, &Request::Ack { transfer, next: 1 << 40 }).await;
    a.send_to(&gateway, &Request::Commit { id: "c".into(), session: a.session.clone(), transfer, digest: None }).await;
    a.send_chunk(&gateway, transfer, 0, b"forged").await;
    for _ in 0..4 {
        let code = a
            .expect(|r| match r {
                Response::Error { code, .. } => Some(code),
                _ => None,
            })
            .await;
        assert_eq!(code, ErrorCode::BadRequest);
    }
    // A device id in the payload means nothing: this reads Alice's root, where there is no f.bin.
    a.publish(
        Topic::request(&alice.device_id),
        r#"{"op":"get","id":"x","session":"alices","path":"f.bin","device":"bob"}"#.as_bytes().to_vec(),
    )
    .await;
    let code = a
        .expect(|r| match r {
            Response::Error { id: Some(id), code, .. } if id == "x" => Some(code),
            _ => None,
        })
        .await;
    assert_eq!(code, ErrorCode::NotFound);

    // Bob's transfer was not disturbed.
    let sha = tokio::time::timeout(LIMIT, bobs_get).await.unwrap().unwrap().expect("Bob's get completes");
    assert_eq!(sha, sha256(&data));
    gw.stop().await;
}
