//! `link/sidekey.profdata`, the profile release images are built with
//! (`-Cprofile-use`, deploy/Dockerfile), is read by the rustc on this
//! machine: a profile this toolchain's LLVM cannot read (a new toolchain, a
//! file cut short) would otherwise surface only in an image build.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails by panicking"
)]

use std::path::Path;
use std::process::Command;

#[test]
fn the_release_profile_is_read_by_this_rustc() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("main.rs");
    std::fs::write(&src, "fn main() { println!(\"built {}\", 42); }").unwrap();
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/sidekey.profdata");
    let exe = dir.path().join("main");
    let built = Command::new("rustc")
        .args(["-O", "-C"])
        .arg(format!("profile-use={}", profile.display()))
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    // A profile LLVM cannot read is only a warning ("malformed
    // instrumentation profile data"), and the build goes on without it.
    let stderr = String::from_utf8_lossy(&built.stderr);
    assert!(built.status.success() && stderr.is_empty(), "{stderr}");
    let ran = Command::new(&exe).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "built 42\n");
}
