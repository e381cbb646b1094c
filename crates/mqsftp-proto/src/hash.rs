//! The whole-file hash each transfer is verified with, end to end: its algorithm ([`HashAlg`]), a running hash
//! ([`Hasher`]), its value ([`Digest`]), and that value as messages carry it ([`HexDigest`]: lowercase hex in a
//! field named after the algorithm, `"sha256": "…"` or `"blake3": "…"`).
//!
//! The device picks the algorithm for each `get` and `put` (`"hash"`); a message that names none means SHA-256,
//! as every message did before BLAKE3 was added. The device library asks for BLAKE3 unless told otherwise: it
//! hashes ~4× faster than SHA-256 even with SHA instructions (5.5 against 1.4 GB/s on the benchmark machine), and
//! each end of a transfer hashes every byte, so on two cores that is a fifth of a download's CPU
//! (docs/performance.md, "Hashing"). SHA-256 stays for users who compare with `sha256sum`.

use serde::{Deserialize, Serialize};

/// Length of every digest here, in bytes (both algorithms give 256 bits).
pub const DIGEST_LEN: usize = 32;

/// A hash algorithm a transfer can be verified with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashAlg {
    /// SHA-256 (FIPS 180-4); what a message that names no algorithm means.
    #[default]
    Sha256,
    /// BLAKE3, 256-bit output.
    Blake3,
}

impl HashAlg {
    /// Every algorithm, in the order a device prefers them.
    pub const ALL: [HashAlg; 2] = [HashAlg::Blake3, HashAlg::Sha256];

    /// The wire name, which is also the name of the field carrying its value: `sha256` or `blake3`.
    pub fn as_str(self) -> &'static str {
        match self {
            HashAlg::Sha256 => "sha256",
            HashAlg::Blake3 => "blake3",
        }
    }

    /// A running hash of this algorithm.
    pub fn hasher(self) -> Hasher {
        match self {
            HashAlg::Sha256 => Hasher::Sha256(sha2::Sha256::default()),
            HashAlg::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }

    /// The digest of `data`.
    pub fn digest(self, data: &[u8]) -> Digest {
        let mut h = self.hasher();
        h.update(data);
        h.finalize()
    }
}

impl std::fmt::Display for HashAlg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a hash algorithm this crate knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hash algorithm {0:?}: expected sha256 or blake3")]
pub struct UnknownHashAlg(pub String);

impl std::str::FromStr for HashAlg {
    type Err = UnknownHashAlg;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HashAlg::ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| UnknownHashAlg(s.to_string()))
    }
}

/// A running hash.
#[derive(Debug, Clone)]
pub enum Hasher {
    /// SHA-256 (`sha2`, with the CPU's SHA instructions when it has them).
    Sha256(sha2::Sha256),
    /// BLAKE3 (one thread, with the widest SIMD the CPU has). Boxed: its state is ~2 KiB.
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    /// Hashes `data` next.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => sha2::Digest::update(h, data),
            Hasher::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// The digest of everything hashed.
    pub fn finalize(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest { alg: HashAlg::Sha256, bytes: sha2::Digest::finalize(h).into() },
            Hasher::Blake3(h) => Digest { alg: HashAlg::Blake3, bytes: *h.finalize().as_bytes() },
        }
    }

    /// The algorithm.
    pub fn alg(&self) -> HashAlg {
        match self {
            Hasher::Sha256(_) => HashAlg::Sha256,
            Hasher::Blake3(_) => HashAlg::Blake3,
        }
    }
}

/// So that a file can be hashed with `std::io::copy(&mut file, &mut hasher)`.
impl std::io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A file's hash: the algorithm and its 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    /// The algorithm.
    pub alg: HashAlg,
    /// The value.
    pub bytes: [u8; DIGEST_LEN],
}

impl Digest {
    /// The value in lowercase hex (what `sha256sum` and `b3sum` print).
    pub fn hex(&self) -> String {
        hex::encode(self.bytes)
    }
}

/// `sha256 9f86…` or `blake3 c1ab…`.
impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.alg, self.hex())
    }
}

impl From<Digest> for HexDigest {
    fn from(d: Digest) -> Self {
        match d.alg {
            HashAlg::Sha256 => HexDigest::Sha256(d.hex()),
            HashAlg::Blake3 => HexDigest::Blake3(d.hex()),
        }
    }
}

/// A hash as a message carries it: lowercase hex in a field named after its algorithm. Messages flatten it in
/// (`#[serde(flatten)]`), so a `get_done` reads `{"type":"get_done",…,"blake3":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HexDigest {
    /// `"sha256": "<64 hex digits>"`.
    Sha256(String),
    /// `"blake3": "<64 hex digits>"`.
    Blake3(String),
}

/// A hash value that is not 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {alg} must be {} lowercase hex digits, got {value:?}", 2 * DIGEST_LEN)]
pub struct BadDigest {
    /// The field (and algorithm).
    pub alg: HashAlg,
    /// What it held.
    pub value: String,
}

impl HexDigest {
    /// The algorithm, named by the field.
    pub fn alg(&self) -> HashAlg {
        match self {
            HexDigest::Sha256(_) => HashAlg::Sha256,
            HexDigest::Blake3(_) => HashAlg::Blake3,
        }
    }

    /// The hex digits as given.
    pub fn hex(&self) -> &str {
        match self {
            HexDigest::Sha256(h) | HexDigest::Blake3(h) => h,
        }
    }

    /// The value, if it is 64 lowercase hex digits.
    pub fn parse(&self) -> Result<Digest, BadDigest> {
        let (alg, h) = (self.alg(), self.hex());
        let mut bytes = [0u8; DIGEST_LEN];
        let lower = h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        match hex::decode_to_slice(h, &mut bytes) {
            Ok(()) if lower => Ok(Digest { alg, bytes }),
            _ => Err(BadDigest { alg, value: h.to_string() }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn both_algorithms_give_their_published_test_vectors() {
        // FIPS 180-2 "abc", and the BLAKE3 reference's hash of the empty input.
        assert_eq!(
            HashAlg::Sha256.digest(b"abc").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            HashAlg::Blake3.digest(b"").hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        let mut h = HashAlg::Blake3.hasher();
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(h.finalize(), HashAlg::Blake3.digest(b"abc"));
        assert_eq!(HashAlg::Blake3.digest(b"abc").to_string().split_once(' ').unwrap().0, "blake3");
    }

    #[test]
    fn hex_digests_parse_only_64_lowercase_hex_digits() {
        let d = HashAlg::Blake3.digest(b"x");
        assert_eq!(HexDigest::from(d).parse(), Ok(d));
        for bad in ["", "ab", &"AB".repeat(32), &"g0".repeat(32), &"ab".repeat(33)] {
            let e = HexDigest::Sha256(bad.to_string()).parse().unwrap_err();
            assert_eq!(e.alg, HashAlg::Sha256);
            assert!(e.to_string().starts_with("field sha256 must be 64 lowercase hex digits"), "{e}");
        }
        assert_eq!("blake3".parse::<HashAlg>(), Ok(HashAlg::Blake3));
        assert!("md5".parse::<HashAlg>().unwrap_err().to_string().contains("\"md5\""));
    }
}
