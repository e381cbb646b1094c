use crate::common::{assert_success, pseudo_random, text, Fixture};

/// put (with fsync), ls, rename, get, rm, rmdir through OpenSSH's `sftp`, checking the negotiated cipher.
async fn round_trip(ciphers: Option<&str>, expect_cipher: &str) {
    let fx = Fixture::start().await;
    let data = pseudo_random(6 * 1024 * 1024 + 123, 7);
    let src = fx.dir.path().join("src.bin");
    let dst = fx.dir.path().join("dst.bin");
    std::fs::write(&src, &data).unwrap();
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    std::fs::File::options().write(true).open(&src).unwrap().set_modified(mtime).unwrap();
    // put -f: fsync@openssh.com; put -p: FSETSTAT with mode and times; chmod: SETSTAT.
    let batch = format!(
        "pwd\nmkdir docs\nput -fp {} docs/big.bin\nls -l docs\nrename docs/big.bin docs/moved.bin\nchmod 640 docs/moved.bin\nget docs/moved.bin {}\nls docs\n",
        src.display(),
        dst.display()
    );
    let cipher_opt = ciphers.map(|c| format!("Ciphers={c}"));
    let mut extra = vec!["-v"];
    if let Some(opt) = &cipher_opt {
        extra.extend(["-o", opt.as_str()]);
    }
    let out = fx.sftp(&batch, &extra).await;
    assert_success(&out);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stdout.contains("Remote working directory: /\n"), "{stdout}");
    // Output lines, without the echoed commands ("sftp> put …").
    let output: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("sftp>")).collect();
    let listing = output.iter().find(|l| l.ends_with("big.bin")).unwrap_or_else(|| panic!("no big.bin in {stdout}"));
    assert!(listing.starts_with("-rw") && listing.contains(&data.len().to_string()), "{listing}");
    assert!(output.iter().any(|l| l.trim_end().ends_with("docs/moved.bin")), "{stdout}");
    assert!(stderr.contains(&format!("cipher: {expect_cipher}")), "{stderr}");

    assert!(std::fs::read(&dst).unwrap() == data, "downloaded file differs");
    assert!(std::fs::read(fx.root.join("docs/moved.bin")).unwrap() == data, "uploaded file differs");
    assert!(!fx.root.join("docs/big.bin").exists());
    let md = std::fs::metadata(fx.root.join("docs/moved.bin")).unwrap();
    assert_eq!(md.modified().unwrap(), mtime, "put -p did not set the time");
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777, 0o640, "chmod");

    let out = fx.sftp("rm docs/moved.bin\nrmdir docs\nls -a\n", &[]).await;
    assert_success(&out);
    assert!(!fx.root.join("docs").exists());
    fx.server.unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_sftp_default_cipher() {
    round_trip(None, "chacha20-poly1305@openssh.com").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_sftp_aes128_gcm() {
    round_trip(Some("aes128-gcm@openssh.com"), "aes128-gcm@openssh.com").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_sftp_aes256_gcm() {
    round_trip(Some("aes256-gcm@openssh.com"), "aes256-gcm@openssh.com").await;
}

/// Ciphers that are not offered are refused at key exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_sftp_with_only_old_ciphers_is_refused() {
    let fx = Fixture::start().await;
    let out = fx.sftp("pwd\n", &["-o", "Ciphers=aes128-cbc"]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no matching cipher"), "{}", text(&out.stderr));
}
