//! The cost of the per-byte work no implementation of mqsftp can skip, measured on this machine, and the fastest a
//! transfer could go on it given that cost.
//!
//! A raw `sftp` get encrypts each byte once (sshd) and decrypts it once (the client). An mqsftp get also has the
//! gateway decrypt SSH, hash (BLAKE3 or SHA-256, as the device asks, for `get_done`), CRC and encrypt TLS;
//! Mosquitto decrypt and re-encrypt TLS; the device decrypt TLS, CRC and hash. When every stage shares the same
//! cores, throughput is bounded by `cores / (CPU seconds per GiB of all processes)`. [`limits`] takes sshd's and
//! Mosquitto's cost as measured in the same run (programs mqsftp does not change) and, for the gateway and the
//! device, only the cryptography, hashing and CRC they must do, timed here with the fastest implementations at hand
//! (AES-128-GCM from aws-lc-rs, the cipher suite family TLS and SSH both use here; SHA-256 from `sha2`, with SHA-NI
//! when the CPU has it; BLAKE3 from `blake3`, one thread, with the widest SIMD the CPU has). The result is an upper
//! bound: real gateways and devices also copy, make system calls and switch contexts.
//!
//! [`measure_io`] adds the part of those system calls no implementation can skip either: the gateway must take the
//! file's bytes off one loopback TCP socket (from sshd) and put them on another (to Mosquitto), and the device must
//! take them off a socket and put them in a file (a put: out of a file, onto a socket). Each is timed here in the
//! cheapest form this machine offers: 256 KiB per system call, the thread's own CPU time, and for files the lesser
//! of page-cache and `O_DIRECT` I/O. What the kernel does for those calls in other threads (the writeback of the
//! page cache, the softirqs of the receiving end on loopback when they run on the sender's CPU) is left out, as it
//! is left out of the gateway's and the device's measured CPU.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Instant;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use mqsftp_proto::HashAlg;

const GIB: f64 = (1u64 << 30) as f64;
/// Bytes pushed through each primitive (a buffer of 16 MiB, several passes).
const WORK: usize = 512 << 20;
const BUF: usize = 16 << 20;

/// CPU seconds per GiB of each primitive on one core.
#[derive(Debug, Clone, Copy)]
pub struct Primitives {
    pub sha256: f64,
    pub blake3: f64,
    /// AES-128-GCM seal in 16 KiB records (a TLS record; SSH packets are smaller, so this is the cheap case).
    pub aes_gcm: f64,
    pub crc32c: f64,
}

fn per_gib(mut f: impl FnMut(&mut [u8])) -> f64 {
    let mut buf = vec![0x5au8; BUF];
    f(&mut buf); // warm up
    let started = Instant::now();
    for _ in 0..WORK / BUF {
        f(&mut buf);
    }
    started.elapsed().as_secs_f64() * GIB / WORK as f64
}

pub fn measure() -> anyhow::Result<Primitives> {
    // The hashers mqsftp runs (`mqsftp_proto::Hasher`), fed in chunk-sized pieces as a transfer feeds them.
    let hash = |alg: HashAlg| {
        per_gib(|b| {
            let mut h = alg.hasher();
            for c in b.chunks(64 << 10) {
                h.update(c);
            }
            std::hint::black_box(h.finalize());
        })
    };
    let (sha256, blake3) = (hash(HashAlg::Sha256), hash(HashAlg::Blake3));
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_128_GCM, &[7u8; 16]).map_err(|_| anyhow::anyhow!("aws-lc-rs refused an AES key"))?,
    );
    let mut sealed = Ok(());
    let aes_gcm = per_gib(|b| {
        for (i, rec) in b.chunks_mut(16 << 10).enumerate() {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&(i as u64).to_be_bytes());
            if let Err(e) = key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), rec) {
                sealed = Err(anyhow::anyhow!("AES-GCM seal failed: {e}"));
            }
        }
    });
    sealed?;
    let crc32c = per_gib(|b| {
        let mut crc = 0;
        for c in b.chunks(64 << 10) {
            crc = crc32c::crc32c_append(crc, c);
        }
        std::hint::black_box(crc);
    });
    Ok(Primitives { sha256, blake3, aes_gcm, crc32c })
}

impl Primitives {
    /// One hash's cost.
    pub fn hash(&self, alg: HashAlg) -> f64 {
        match alg {
            HashAlg::Sha256 => self.sha256,
            HashAlg::Blake3 => self.blake3,
        }
    }

    /// What the gateway and the device together must spend per GiB of a get or a put verified with `hash`: three
    /// AES-GCM passes (SSH on the gateway, TLS out of one end and into the other), the hash on both ends, CRC32C on
    /// both ends.
    pub fn gateway_and_device(&self, hash: HashAlg) -> f64 {
        3.0 * self.aes_gcm + 2.0 * self.hash(hash) + 2.0 * self.crc32c
    }
}

/// Bytes moved through each kind of system call, and the size of each call.
const IO_WORK: usize = 256 << 20;
const IO_CALL: usize = 256 << 10;

/// CPU seconds per GiB that the kernel spends, in the calling thread, on the system calls that move a transfer's
/// bytes: each the least of [`IO_ROUNDS`] rounds.
#[derive(Debug, Clone, Copy)]
pub struct KernelIo {
    /// Writing to a loopback TCP socket.
    pub tcp_send: f64,
    /// Reading from a loopback TCP socket.
    pub tcp_recv: f64,
    /// Writing a new file and `fsync`ing it (page cache or `O_DIRECT`, whichever cost less).
    pub file_write: f64,
    /// Reading a file (page cache or `O_DIRECT`, whichever cost less).
    pub file_read: f64,
}

const IO_ROUNDS: usize = 2;

impl KernelIo {
    /// A get: the gateway receives from sshd and sends to Mosquitto; the device receives and writes the file.
    pub fn get(&self) -> f64 {
        2.0 * self.tcp_recv + self.tcp_send + self.file_write
    }

    /// A put: the device reads the file and sends it; the gateway receives it and sends it to sshd.
    pub fn put(&self) -> f64 {
        self.file_read + 2.0 * self.tcp_send + self.tcp_recv
    }
}

/// This thread's CPU time (user and system) so far, in seconds. (`/proc/thread-self/stat` counts in ticks of 10 ms
/// and `schedstat` lags by up to a tick for the running thread: too coarse here.)
#[allow(unsafe_code)]
fn thread_cpu() -> anyhow::Result<f64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    anyhow::ensure!(rc == 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID): {}", std::io::Error::last_os_error());
    Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

/// `len` bytes at an address aligned to 4 KiB inside `buf`, as `O_DIRECT` needs.
fn aligned(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    buf.resize(len + 4096, 0x5a);
    let off = buf.as_ptr().align_offset(4096);
    &mut buf[off..off + len]
}

/// Sends `work` bytes over loopback TCP: (sender, receiver) CPU seconds per GiB.
fn tcp_once(work: usize) -> anyhow::Result<(f64, f64)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let receiver = std::thread::spawn(move || -> anyhow::Result<(usize, f64)> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; IO_CALL];
        let started = thread_cpu()?;
        let mut got = 0;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok((got, thread_cpu()? - started)),
                n => got += n,
            }
        }
    });
    let mut s = TcpStream::connect(addr)?;
    let buf = vec![0x5au8; IO_CALL];
    let started = thread_cpu()?;
    for _ in 0..work / IO_CALL {
        s.write_all(&buf)?;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let send = thread_cpu()? - started;
    let (got, recv) = receiver.join().map_err(|_| anyhow::anyhow!("the loopback receiver panicked"))??;
    anyhow::ensure!(got == work, "the loopback receiver got {got} bytes of {work}");
    Ok((send * GIB / work as f64, recv * GIB / work as f64))
}

/// Writes `work` bytes to a new file in `dir` and `fsync`s it, then reads them back: (write, read) CPU
/// seconds per GiB. With `direct`, through `O_DIRECT` (None where the file system refuses it).
fn file_once(dir: &Path, direct: bool, work: usize) -> anyhow::Result<Option<(f64, f64)>> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(if direct { "floor-io-direct.tmp" } else { "floor-io.tmp" });
    let flags = if direct { libc::O_DIRECT } else { 0 };
    let mut backing = Vec::new();
    let buf = aligned(&mut backing, IO_CALL);
    let result = (|| -> anyhow::Result<Option<(f64, f64)>> {
        let mut f = match std::fs::OpenOptions::new().write(true).create_new(true).custom_flags(flags).open(&path) {
            Ok(f) => f,
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(e) => return Err(anyhow::anyhow!("creating {}: {e}", path.display())),
        };
        let started = thread_cpu()?;
        for _ in 0..work / IO_CALL {
            match f.write_all(buf) {
                Ok(()) => {}
                Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
                Err(e) => return Err(anyhow::anyhow!("writing {}: {e}", path.display())),
            }
        }
        f.sync_all().map_err(|e| anyhow::anyhow!("fsync of {}: {e}", path.display()))?;
        let write = thread_cpu()? - started;
        drop(f);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
        let started = thread_cpu()?;
        let mut got = 0;
        loop {
            match f.read(buf).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))? {
                0 => break,
                n => got += n,
            }
        }
        let read = thread_cpu()? - started;
        anyhow::ensure!(got == work, "read {got} bytes of {work} back from {}", path.display());
        Ok(Some((write * GIB / work as f64, read * GIB / work as f64)))
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// The kernel's share of moving a transfer's bytes, each part the cheapest of [`IO_ROUNDS`] rounds and, for files,
/// of page-cache and `O_DIRECT` I/O. `dir` is where the device writes its files (so the same file system).
pub fn measure_io(dir: &Path) -> anyhow::Result<KernelIo> {
    measure_io_with(dir, IO_WORK)
}

/// [`measure_io`] with `work` bytes (a multiple of [`IO_CALL`]) per measurement.
fn measure_io_with(dir: &Path, work: usize) -> anyhow::Result<KernelIo> {
    let mut io = KernelIo {
        tcp_send: f64::INFINITY,
        tcp_recv: f64::INFINITY,
        file_write: f64::INFINITY,
        file_read: f64::INFINITY,
    };
    for _ in 0..IO_ROUNDS {
        let (send, recv) = tcp_once(work)?;
        io.tcp_send = io.tcp_send.min(send);
        io.tcp_recv = io.tcp_recv.min(recv);
        for direct in [false, true] {
            if let Some((write, read)) = file_once(dir, direct, work)? {
                io.file_write = io.file_write.min(write);
                io.file_read = io.file_read.min(read);
            }
        }
    }
    anyhow::ensure!(
        [io.tcp_send, io.tcp_recv, io.file_write, io.file_read].iter().all(|x| x.is_finite()),
        "the kernel I/O measurement gave no figure: {io:?}"
    );
    Ok(io)
}

/// The fastest a transfer can go on `cores` cores if it costs `cpu_per_gib` CPU seconds per GiB, in MB/s.
pub fn bound_mbps(cores: f64, cpu_per_gib: f64) -> f64 {
    if cpu_per_gib <= 0.0 {
        return 0.0;
    }
    cores / cpu_per_gib * GIB / 1e6
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bound_is_cores_over_cost() {
        assert!((bound_mbps(2.0, 2.0) - GIB / 1e6).abs() < 1e-9);
        assert_eq!(bound_mbps(2.0, 0.0), 0.0);
        let p = Primitives { sha256: 1.0, blake3: 0.25, aes_gcm: 0.5, crc32c: 0.1 };
        assert!((p.gateway_and_device(HashAlg::Sha256) - 3.7).abs() < 1e-9);
        assert!((p.gateway_and_device(HashAlg::Blake3) - 2.2).abs() < 1e-9);
        let io = KernelIo { tcp_send: 0.1, tcp_recv: 0.2, file_write: 0.4, file_read: 0.8 };
        assert!((io.get() - 0.9).abs() < 1e-9, "recv twice, send once, write once");
        assert!((io.put() - 1.2).abs() < 1e-9, "read once, send twice, recv once");
    }

    #[test]
    fn kernel_io_is_measured_and_positive() {
        let dir = std::env::temp_dir().join(format!("mqsftp-floor-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let io = measure_io_with(&dir, 16 * IO_CALL).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        for (what, x) in
            [("send", io.tcp_send), ("recv", io.tcp_recv), ("write", io.file_write), ("read", io.file_read)]
        {
            assert!(x > 0.0 && x < 60.0, "{what}: {x} CPU s/GiB");
        }
    }
}
