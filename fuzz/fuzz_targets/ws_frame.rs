//! Fuzzes what a WebSocket client controls: one text frame, parsed into a request and decoded
//! into an action (`petmesh_node::realtime::decode::decode_frame`, the entry point of the
//! property tests too). Every input must give an action or an error with a code whose answer
//! frame is JSON carrying that code; a panic or a malformed answer is a finding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use petmesh_node::realtime::{decode::decode_frame, protocol};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8: the WebSocket layer refuses anything else before the node sees it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode_frame(text) {
        Ok((request, _action)) => {
            assert!((1..=100).contains(&request.action.len()));
            assert!(request.payload.is_object());
        }
        Err((id, err)) => {
            let answer: Value =
                serde_json::from_str(&protocol::failure(&id, "", &err)).expect("answers are JSON");
            assert_eq!(answer["payload"]["code"], err.code.as_str());
            assert_eq!(answer["id"], id);
        }
    }
});
