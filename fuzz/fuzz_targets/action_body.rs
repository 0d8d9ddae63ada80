//! The action body parser never panics on any bytes, echoes at most 255
//! characters of an unknown action, and what it accepts round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../api/src/action.rs"]
#[allow(dead_code)]
mod action;

use action::{ActionError, MAX_SHOWN_CHARS, ServerAction};

fuzz_target!(|body: &[u8]| {
    match ServerAction::parse(body) {
        Ok(parsed) => {
            // Its canonical body names it again...
            assert_eq!(ServerAction::parse(parsed.body().as_bytes()), Ok(parsed));
            // ...and so does the accepted document, written out again.
            let value: serde_json::Value = serde_json::from_slice(body).unwrap();
            let again = serde_json::to_vec(&value).unwrap();
            assert_eq!(ServerAction::parse(&again), Ok(parsed));
        }
        Err(ActionError::Unknown(shown)) => {
            assert!(shown.chars().count() <= MAX_SHOWN_CHARS);
        }
        Err(ActionError::Malformed) => {}
    }
});
