//! The binary chunk frame carried on `down` topics.
//!
//! ```text
//! offset size field
//!  0     1    version   = 1
//!  1     1    kind      = 1 (data)
//!  2     2    reserved  = 0
//!  4     8    transfer  u64, big endian
//! 12     8    offset    u64, big endian: where the data starts in the file
//! 20     4    crc32c    of the data, big endian
//! 24     n    data      (n = payload length - 24, at most MAX_CHUNK_DATA)
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::TransferId;

/// Bytes before the data.
pub const HEADER_LEN: usize = 24;
/// Frame version this crate writes and reads.
pub const VERSION: u8 = 1;
/// Kind byte of a data chunk.
pub const KIND_DATA: u8 = 1;
/// Largest data part of one chunk (1 MiB); gateways use less (256 KiB by default).
pub const MAX_CHUNK_DATA: usize = 1 << 20;

/// Why a chunk frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Shorter than the header.
    #[error("chunk frame is {0} bytes; the header alone is {HEADER_LEN}")]
    Truncated(usize),
    /// Unknown version byte.
    #[error("chunk frame version {0} is not supported (expected {VERSION})")]
    Version(u8),
    /// Unknown kind byte.
    #[error("chunk kind {0} is not supported")]
    Kind(u8),
    /// The reserved bytes are not zero.
    #[error("chunk reserved field is {0:#06x}; it must be 0")]
    Reserved(u16),
    /// Data longer than [`MAX_CHUNK_DATA`].
    #[error("chunk carries {0} bytes; the limit is {MAX_CHUNK_DATA}")]
    TooLarge(usize),
    /// `offset + len` overflows.
    #[error("chunk at offset {offset} with {len} bytes overflows a 64-bit file size")]
    Overflow { offset: u64, len: usize },
    /// CRC32C does not match the data.
    #[error("chunk at offset {offset} of transfer {transfer} fails its crc32c check (header {expected:08x}, data {actual:08x})")]
    Crc { transfer: TransferId, offset: u64, expected: u32, actual: u32 },
}

/// One piece of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The transfer this chunk belongs to.
    pub transfer: TransferId,
    /// Offset of `data` in the file.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
}

impl Chunk {
    /// End offset (exclusive).
    pub fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }

    /// Encodes the frame.
    pub fn encode(&self) -> Bytes {
        Chunk::encode_parts(self.transfer, self.offset, std::slice::from_ref(&self.data))
    }

    /// Encodes the frame of a chunk whose data is `parts` one after the other, copying each once into the frame:
    /// a gateway reading a chunk in several store reads need not join them first.
    pub fn encode_parts(transfer: TransferId, offset: u64, parts: &[Bytes]) -> Bytes {
        let len: usize = parts.iter().map(Bytes::len).sum();
        let crc = parts.iter().fold(0, |crc, p| crc32c::crc32c_append(crc, p));
        let mut buf = BytesMut::with_capacity(HEADER_LEN + len);
        buf.put_u8(VERSION);
        buf.put_u8(KIND_DATA);
        buf.put_u16(0);
        buf.put_u64(transfer);
        buf.put_u64(offset);
        buf.put_u32(crc);
        for p in parts {
            buf.extend_from_slice(p);
        }
        buf.freeze()
    }

    /// Decodes and checks a frame. The data is a zero-copy slice of `frame`.
    pub fn decode(frame: Bytes) -> Result<Chunk, ChunkError> {
        if frame.len() < HEADER_LEN {
            return Err(ChunkError::Truncated(frame.len()));
        }
        let h = &frame[..HEADER_LEN];
        if h[0] != VERSION {
            return Err(ChunkError::Version(h[0]));
        }
        if h[1] != KIND_DATA {
            return Err(ChunkError::Kind(h[1]));
        }
        let reserved = u16::from_be_bytes([h[2], h[3]]);
        if reserved != 0 {
            return Err(ChunkError::Reserved(reserved));
        }
        let be64 = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i..i + 8]);
            u64::from_be_bytes(b)
        };
        let transfer = be64(4);
        let offset = be64(12);
        let expected = u32::from_be_bytes([h[20], h[21], h[22], h[23]]);
        let len = frame.len() - HEADER_LEN;
        if len > MAX_CHUNK_DATA {
            return Err(ChunkError::TooLarge(len));
        }
        if offset.checked_add(len as u64).is_none() {
            return Err(ChunkError::Overflow { offset, len });
        }
        let data = frame.slice(HEADER_LEN..);
        let actual = crc32c::crc32c(&data);
        if actual != expected {
            return Err(ChunkError::Crc { transfer, offset, expected, actual });
        }
        Ok(Chunk { transfer, offset, data })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(transfer in any::<u64>(), offset in 0u64..u64::MAX / 2, data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let c = Chunk { transfer, offset, data: Bytes::from(data) };
            prop_assert_eq!(Chunk::decode(c.encode()).unwrap(), c);
        }

        #[test]
        fn parts_encode_as_their_concatenation(data in proptest::collection::vec(any::<u8>(), 0..4096), cuts in proptest::collection::vec(any::<usize>(), 0..4)) {
            let whole = Bytes::from(data);
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (whole.len() + 1)).collect();
            at.sort_unstable();
            let mut parts = Vec::new();
            let mut from = 0;
            for a in at.into_iter().chain([whole.len()]) {
                parts.push(whole.slice(from..a));
                from = a;
            }
            let c = Chunk { transfer: 9, offset: 77, data: whole };
            prop_assert_eq!(Chunk::encode_parts(9, 77, &parts), c.encode());
        }

        #[test]
        fn decode_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Chunk::decode(Bytes::from(frame));
        }

        #[test]
        fn any_flipped_bit_is_caught(data in proptest::collection::vec(any::<u8>(), 1..256), bit in any::<usize>()) {
            let frame = Chunk { transfer: 7, offset: 0, data: Bytes::from(data) }.encode().to_vec();
            let mut bad = frame.clone();
            let i = HEADER_LEN * 8 + bit % ((frame.len() - HEADER_LEN) * 8);
            bad[i / 8] ^= 1 << (i % 8);
            prop_assert!(
                matches!(Chunk::decode(Bytes::from(bad)), Err(ChunkError::Crc { .. })),
                "flipped data bit not detected"
            );
        }
    }

    #[test]
    fn refuses_bad_frames() {
        assert_eq!(Chunk::decode(Bytes::from_static(&[1; 10])), Err(ChunkError::Truncated(10)));
        let mut f = Chunk { transfer: 1, offset: 0, data: Bytes::from_static(b"x") }.encode().to_vec();
        f[0] = 9;
        assert_eq!(Chunk::decode(Bytes::from(f.clone())), Err(ChunkError::Version(9)));
        f[0] = 1;
        f[1] = 5;
        assert_eq!(Chunk::decode(Bytes::from(f.clone())), Err(ChunkError::Kind(5)));
        f[1] = 1;
        f[3] = 7;
        assert_eq!(Chunk::decode(Bytes::from(f)), Err(ChunkError::Reserved(7)));
        let c = Chunk { transfer: 1, offset: u64::MAX, data: Bytes::from_static(b"x") };
        assert!(matches!(Chunk::decode(c.encode()), Err(ChunkError::Overflow { .. })));
    }
}
