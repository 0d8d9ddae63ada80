//! The URL's project id, server id and request id parsers, and the host
//! name parser (a host name becomes part of a queue name), never panic, and
//! what they accept is canonical and parses back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../core/src/ids.rs"]
#[allow(dead_code)]
mod ids;

use ids::{HostName, ProjectId, RequestId, ServerId};

fuzz_target!(|data: &[u8]| {
    // axum hands the handlers percent-decoded UTF-8; anything else is a 404
    // before our parsers run. Lossy decoding still feeds them every shape.
    let s = String::from_utf8_lossy(data);
    if let Some(p) = ProjectId::parse(&s) {
        let canonical = p.as_str();
        assert_eq!(canonical.len(), 32);
        assert!(
            canonical
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        );
        assert_eq!(ProjectId::parse(canonical).as_ref(), Some(&p));
    }
    if let Some(id) = ServerId::parse(&s) {
        assert_eq!(ServerId::parse(&id.to_string()), Some(id));
    }
    if let Some(r) = RequestId::parse(&s) {
        assert_eq!(r.as_str(), s);
        assert!(r.as_str().is_ascii() && r.as_str().len() == 40);
        assert_eq!(RequestId::parse(r.as_str()).as_ref(), Some(&r));
    }
    if let Ok(h) = HostName::parse(&s) {
        assert_eq!(h.as_str(), s);
        assert!(h.as_str().len() <= HostName::MAX_LEN && h.as_str().is_ascii());
        assert!(!h.as_str().contains(['/', '#', '*', ' ']));
    }
});
