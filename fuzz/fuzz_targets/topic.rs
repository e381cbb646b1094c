//! Topic names as the gateway receives them: parsing never panics, and a parsed topic re-renders identically.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mqsftp_proto::{Topic, TopicKind};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Some(t) = Topic::parse(s) {
        let back = match &t.kind {
            TopicKind::Request => Topic::request(&t.device),
            TopicKind::Response(sess) => Topic::response(&t.device, sess),
            TopicKind::Down(sess) => Topic::down(&t.device, sess),
            TopicKind::Up => Topic::up(&t.device),
        };
        assert_eq!(back, s);
    }
});
