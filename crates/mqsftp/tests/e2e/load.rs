//! Many transfers at once on one gateway (run against both pairs: this test found a stall in the embedded SFTP
//! server, fixed in `mqsftp-sftpd`'s `sftp.rs`).

use crate::support::*;

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
