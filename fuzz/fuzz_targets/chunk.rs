//! Chunk frames from the network: decoding never panics, and what decodes re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mqsftp_proto::Chunk;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Chunk::decode(bytes::Bytes::copy_from_slice(data)) {
        assert_eq!(&c.encode()[..], data);
    }
});
