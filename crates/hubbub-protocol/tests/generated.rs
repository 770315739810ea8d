//! The protobuf types in `src/proto/` are generated from `proto/client.proto` by prost-build,
//! with protox as the `.proto` parser (pure Rust: no protoc on the machine). They are checked
//! in so that building the server needs neither; this test fails when they are stale.
//! `REGENERATE_PROTO=1 cargo test -p hubbub-protocol --test generated` rewrites them.

use std::path::Path;

const GENERATED: &str = "src/proto/centrifugal.centrifuge.protocol.rs";

#[test]
fn generated_code_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let descriptors = protox::compile([root.join("proto/client.proto")], [root.join("proto")])
        .expect("proto/client.proto compiles");
    let out = std::env::temp_dir().join(format!("hubbub-proto-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    prost_build::Config::new()
        // Payloads decode as slices of the received frame, without a copy.
        .bytes(["."])
        .out_dir(&out)
        .compile_fds(descriptors)
        .expect("prost-build generates");
    let fresh = std::fs::read_to_string(out.join("centrifugal.centrifuge.protocol.rs")).unwrap();
    std::fs::remove_dir_all(&out).ok();
    let checked_in = root.join(GENERATED);
    if std::env::var_os("REGENERATE_PROTO").is_some() {
        std::fs::write(&checked_in, &fresh).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&checked_in).unwrap_or_default();
    assert!(
        current == fresh,
        "{GENERATED} is stale: run `REGENERATE_PROTO=1 cargo test -p hubbub-protocol --test generated`"
    );
}
