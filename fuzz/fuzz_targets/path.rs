//! Device paths: confinement never panics and never yields a path that leaves the root.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(p) = mqsftp_proto::confine(s) {
        assert!(!p.as_str().starts_with('/'));
        assert!(p.as_str().split('/').all(|n| n != ".." && n != "."));
        assert!(!p.as_str().chars().any(char::is_control));
        assert_eq!(mqsftp_proto::confine(p.as_str()).ok(), Some(p));
    }
});
