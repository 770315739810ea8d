//! Feeds arbitrary frames to the protocol decoder: it must return a command list or an
//! error, never panic, and every decoded command must re-encode its method name.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(commands) = hubbub_protocol::decode_frame(text) {
            for c in commands {
                assert!(!c.method.name().is_empty());
            }
        }
    }
});
