//! Topic names as the gateway receives them: parsing never panics, and a parsed topic re-renders identically.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mqsftp_proto::Topic;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Some(t) = Topic::parse(s) {
        assert_eq!(t.render(), s);
    }
});
