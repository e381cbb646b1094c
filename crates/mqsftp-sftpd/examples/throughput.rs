//! OpenSSH's `sftp` client against the embedded server: get and put of one file, default cipher and
//! aes128-gcm, printed as a table. A benchmark, not a test: nothing is asserted.
//!
//! ```sh
//! cargo run --release -p mqsftp-sftpd --example throughput [-- SIZE_MIB [DIR]]   # default 256 MiB, in a temp dir
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use mqsftp_sftpd::{OpenFiles, Sftpd, SftpdConfig};

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().map_or(256, |s| s.parse().expect("SIZE_MIB is a number"));
    let parent = args.next();
    let dir = match &parent {
        Some(p) => tempfile::tempdir_in(p).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let d = dir.path();
    let pki = d.join("pki");
    mqsftp_pki::init(&mqsftp_pki::InitOptions {
        dir: pki.clone(),
        sftp_user: "mqsftp".into(),
        sftp_host: "127.0.0.1".into(),
        ..Default::default()
    })
    .unwrap();
    let host_key = d.join("host_ed25519");
    mqsftp_pki::generate_ssh_key(&host_key, "").unwrap();
    let root = d.join("store");
    std::fs::create_dir(&root).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = SftpdConfig {
        root: root.clone(),
        host_key,
        authorized_keys: pki.join("authorized_keys"),
        user: "mqsftp".into(),
        open_files: OpenFiles::Shared,
    };
    let server = Sftpd::start(listener, config).await.unwrap();
    let port = server.local_addr().port();
    let known_hosts = d.join("known_hosts");
    let line = mqsftp_pki::known_hosts_line("127.0.0.1", port, &server.host_public_key_openssh()).unwrap();
    std::fs::write(&known_hosts, format!("{line}\n")).unwrap();

    let size = mib * 1024 * 1024;
    let local = d.join("local.bin");
    write_file(&local, size);
    std::fs::copy(&local, root.join("remote.bin")).unwrap();
    println!("{mib} MiB file, OpenSSH sftp -> mqsftp-sftpd on 127.0.0.1:{port}, files in {}", d.display());
    println!("{:<32} {:>5} {:>9} {:>8}", "cipher", "op", "seconds", "MB/s");
    for cipher in ["default (chacha20-poly1305)", "aes128-gcm@openssh.com"] {
        for (op, batch) in [
            ("get", format!("get remote.bin {}\n", d.join("got.bin").display())),
            ("put", format!("put {} put.bin\n", local.display())),
        ] {
            let batch_file = d.join("batch");
            std::fs::write(&batch_file, batch).unwrap();
            let mut cmd = tokio::process::Command::new("sftp");
            cmd.arg("-b").arg(&batch_file).args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"]);
            cmd.arg("-o").arg(format!("UserKnownHostsFile={}", known_hosts.display()));
            cmd.args(["-o", "StrictHostKeyChecking=yes", "-i"]).arg(pki.join("gateway_ed25519"));
            if cipher.ends_with("@openssh.com") {
                cmd.arg("-o").arg(format!("Ciphers={cipher}"));
            }
            cmd.arg("-P").arg(port.to_string()).arg("mqsftp@127.0.0.1").stdout(std::process::Stdio::null());
            let start = Instant::now();
            let status = cmd.status().await.unwrap();
            let secs = start.elapsed().as_secs_f64();
            assert!(status.success(), "sftp {op} failed");
            println!("{cipher:<32} {op:>5} {secs:>9.2} {:>8.0}", size as f64 / 1e6 / secs);
        }
        let _ = std::fs::remove_file(d.join("got.bin"));
        let _ = std::fs::remove_file(root.join("put.bin"));
    }
    server.shutdown().await;
}

fn write_file(path: &Path, size: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(block.len());
        f.write_all(&block[..n]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
}
