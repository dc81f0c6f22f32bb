//! The committed golden vectors (`tests/vectors/` at the repository root) are exactly what the
//! encoder writes today. Regenerate with `cargo run --release --bin gen-vectors -- ../tests/vectors`.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn committed_vectors_match_the_encoder() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../tests/vectors");
    let out = Command::new(env!("CARGO_BIN_EXE_gen-vectors")).arg("--check").arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
