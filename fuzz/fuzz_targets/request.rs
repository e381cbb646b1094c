//! Device requests from the network: decoding never panics; a decoded request survives a round trip.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mqsftp_proto::Request;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Request::decode(data) {
        assert_eq!(Request::decode(&r.encode()).ok(), Some(r));
    }
});
