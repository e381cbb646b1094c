use crate::support::*;

async fn round_trip(sizes: &[usize]) {
    let (stack, gw, cfg) = setup("getter").await;
    let mut client = connect(&cfg).await;
    let out = tempfile::tempdir().unwrap();
    for (i, &len) in sizes.iter().enumerate() {
        let name = format!("f{i}-{len}.bin");
        let data = content(len, len as u64 + 7);
        put_on_store(&stack, "getter", &format!("dir/{name}"), &data);
        let mut last = None;
        let outcome = tokio::time::timeout(LIMIT, client.get(&format!("dir/{name}"), out.path(), |p| last = Some(p)))
            .await
            .expect("in time")
            .expect("get succeeds");
        assert_eq!(outcome.size, len as u64);
        assert_eq!(outcome.sha256, sha256(&data), "reported hash of {name}");
        assert_eq!(sha256_file(&out.path().join(&name)), sha256(&data), "file content of {name}");
        let last = last.expect("progress reported");
        assert_eq!((last.done, last.total), (len as u64, len as u64));
    }
    // Only the verified files, no leftovers.
    assert_eq!(entries(out.path()).len(), sizes.len(), "{:?}", entries(out.path()));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_sizes_round_trip() {
    round_trip(&[0, 1, 64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 10 * 1024 * 1024]).await;
}

/// The prototype failed at 256 MiB because it sent the whole file as one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_of_300_mib_round_trips() {
    round_trip(&[300 * 1024 * 1024]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_names_and_nested_dirs() {
    let (stack, gw, cfg) = setup("names").await;
    let mut client = connect(&cfg).await;
    let out = tempfile::tempdir().unwrap();
    for rel in ["a b/c d.txt", "日本/データ 😀.bin", "x/%41%2F.dat"] {
        let data = content(5000, rel.len() as u64);
        put_on_store(&stack, "names", rel, &data);
        let target = out.path().join("got");
        client.get(rel, &target, |_| {}).await.unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(std::fs::read(&target).unwrap(), data, "{rel}");
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_get_concurrently_each_their_own_file() {
    let (stack, gw, cfg_a) = setup("dev-a").await;
    let cfg_b = mqsftp_device::DeviceConfig::load(&stack.device("dev-b").unwrap()).unwrap();
    let a = content(3_000_000, 1);
    let b = content(2_000_000, 2);
    put_on_store(&stack, "dev-a", "same.bin", &a);
    put_on_store(&stack, "dev-b", "same.bin", &b);
    let out = tempfile::tempdir().unwrap();
    let (pa, pb) = (out.path().join("a"), out.path().join("b"));
    let (mut ca, mut cb) = (connect(&cfg_a).await, connect(&cfg_b).await);
    let (ra, rb) = tokio::join!(ca.get("same.bin", &pa, |_| {}), cb.get("same.bin", &pb, |_| {}));
    ra.unwrap();
    rb.unwrap();
    assert_eq!(std::fs::read(&pa).unwrap(), a);
    assert_eq!(std::fs::read(&pb).unwrap(), b);
    gw.stop().await;
}

/// More downloads open at once than an SFTP session has safe handle numbers (russh-sftp mangles handles from 128
/// on): the gateway queues them within its handle limit, and every one completes with the right content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_concurrent_gets_than_safe_sftp_handles_all_complete() {
    use mqsftp_proto::{Chunk, Request, Response, Topic};
    use std::collections::HashMap;
    const N: usize = 200;
    let stack = start_stack();
    set_transfer_option(&stack, "max_transfers_per_device", (N as i64).into());
    set_transfer_option(&stack, "max_transfers", (N as i64).into());
    let gw = GatewayProcess::spawn(&stack).await;
    let mut gateway = None;
    let cfg = mqsftp_device::DeviceConfig::load(&stack.device("many").unwrap()).unwrap();
    let mut want = HashMap::new();
    for i in 0..N {
        let data = content(3000 + i, i as u64);
        put_on_store(&stack, "many", &format!("f{i}"), &data);
        want.insert(format!("g{i}"), sha256(&data));
    }
    let down = Topic::down(&cfg.device_id, &mqsftp_proto::SessionId::new("many").unwrap());
    let mut raw = RawDevice::connect_with(&cfg, "many", vec![down.clone()]).await;
    for i in 0..N {
        raw.send(&Request::Get { id: format!("g{i}"), session: raw.session.clone(), path: format!("f{i}"), offset: 0 })
            .await;
    }
    let (mut ids, mut done) = (HashMap::new(), 0);
    while done < N {
        let p = tokio::time::timeout(LIMIT, raw.link.incoming.recv()).await.expect("progress in time").unwrap();
        if p.topic == down {
            let c = Chunk::decode(p.payload).unwrap();
            let next = c.offset + c.data.len() as u64;
            raw.send_to(gateway.as_ref().unwrap(), &Request::Ack { transfer: c.transfer, next }).await;
            continue;
        }
        match Response::decode(&p.payload).unwrap() {
            Response::GetAccepted { id, transfer, gateway: g, .. } => {
                gateway = Some(g);
                ids.insert(transfer, id);
            }
            Response::GetDone { transfer, sha256, .. } => {
                assert_eq!(Some(&sha256), want.get(&ids[&transfer]), "content of {}", ids[&transfer]);
                done += 1;
            }
            other => {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                panic!("after {done} of {N} downloads: {other:?}")
            }
        }
    }
    gw.kill().await;
}
