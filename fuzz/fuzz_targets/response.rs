//! Gateway responses as a device receives them: decoding never panics; a decoded response survives a round trip.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mqsftp_proto::Response;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Response::decode(data) {
        assert_eq!(Response::decode(&r.encode()).ok(), Some(r));
    }
});
