//! `mqsftp demo` and `mqsftp dev`: the embedded broker and SFTP server, with nothing else installed.

use std::process::Stdio;

use tokio::io::AsyncBufReadExt;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_mqsftp");

/// The demo needs no Mosquitto and no sshd: with an empty PATH it could not start them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_verifies_a_round_trip_with_nothing_installed() {
    let out = tokio::time::timeout(
        LIMIT,
        tokio::process::Command::new(BIN).args(["demo", "--size", "3 MiB"]).env("PATH", "/nonexistent").output(),
    )
    .await
    .expect("demo finishes in time")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for needle in ["[6/6] verifying", "all have blake3", "demo OK", "durable: true", "File sample.bin (3145728 bytes)"]
    {
        assert!(stdout.contains(needle), "{needle:?} missing from:\n{stdout}");
    }
}

/// `mqsftp dev` keeps the stack up and serves the CLI from other processes; run again in the same directory it
/// reuses keys and ports, so the printed commands keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_the_cli_until_stopped_and_restarts_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let data = content(700_000, 3);
    let src = work.path().join("src.bin");
    std::fs::write(&src, &data).unwrap();
    for round in 0..2 {
        let mut dev = tokio::process::Command::new(BIN)
            .args(["dev", "--dir"])
            .arg(dir.path())
            .env("PATH", "/nonexistent")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(dev.stdout.take().unwrap()).lines();
        let mut config = None;
        let ready = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("--config ").nth(1) {
                    config.get_or_insert_with(|| rest.split_whitespace().next().unwrap().to_string());
                }
                if line.contains("Press Ctrl-C") {
                    return;
                }
            }
            panic!("mqsftp dev exited before it was ready");
        };
        tokio::time::timeout(LIMIT, ready).await.expect("dev ready in time");
        let config = config.expect("dev printed a --config path");
        let cli = |args: &[&str]| {
            let mut c = std::process::Command::new(BIN);
            c.args(args).arg("--config").arg(&config);
            c
        };
        let remote = format!("docs/round{round}.bin");
        let st = cli(&["put", "-q"]).arg(&src).arg(&remote).status().unwrap();
        assert!(st.success(), "put through mqsftp dev");
        let ls = cli(&["ls", "docs"]).output().unwrap();
        let listing = String::from_utf8_lossy(&ls.stdout);
        assert!(listing.contains(&format!("round{round}.bin")), "{listing}");
        let back = work.path().join(format!("back{round}"));
        let st = cli(&["get", "-q", &remote]).arg(&back).status().unwrap();
        assert!(st.success(), "get through mqsftp dev");
        assert_eq!(std::fs::read(&back).unwrap(), data);
        let pid = dev.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let status = tokio::time::timeout(LIMIT, dev.wait()).await.expect("dev stops").unwrap();
        assert!(status.success(), "dev exits 0 on SIGTERM: {status:?}");
    }
}
