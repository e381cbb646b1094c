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

/// The fastest a transfer can go on `cores` cores if it costs `cpu_per_gib` CPU seconds per GiB, in MB/s.
pub fn bound_mbps(cores: f64, cpu_per_gib: f64) -> f64 {
    if cpu_per_gib <= 0.0 {
        return 0.0;
    }
    cores / cpu_per_gib * GIB / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_is_cores_over_cost() {
        assert!((bound_mbps(2.0, 2.0) - GIB / 1e6).abs() < 1e-9);
        assert_eq!(bound_mbps(2.0, 0.0), 0.0);
        let p = Primitives { sha256: 1.0, blake3: 0.25, aes_gcm: 0.5, crc32c: 0.1 };
        assert!((p.gateway_and_device(HashAlg::Sha256) - 3.7).abs() < 1e-9);
        assert!((p.gateway_and_device(HashAlg::Blake3) - 2.2).abs() < 1e-9);
    }
}
