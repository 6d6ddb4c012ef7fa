//! The files in `link/` that release builds take, read by this machine's
//! toolchain: a line the linker refuses in `hot-functions.ld` (which
//! build.rs hands the linker of optimised Linux builds), or a
//! `sidekey.profdata` this rustc's LLVM cannot read (deploy/Dockerfile
//! builds with `-Cprofile-use`), would otherwise surface only in a release
//! build, the image.

#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails by panicking"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn the_hot_functions_script_links_and_places_std_functions() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/hot-functions.ld");
    let (_dir, exe, _) = build(&format!("link-arg=-Wl,-T,{}", script.display()));
    // The section holds something: the script's std patterns (formatting,
    // the allocator) matched functions of this program too.
    let elf = std::fs::read(&exe).unwrap();
    let names = section_names(&elf);
    assert!(names.iter().any(|n| n == ".text.hot"), "{names:?}");
}

#[test]
fn the_release_profile_is_read_by_this_rustc() {
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("link/sidekey.profdata");
    let (_dir, _exe, stderr) = build(&format!("profile-use={}", profile.display()));
    // A profile LLVM cannot read is only a warning ("malformed
    // instrumentation profile data"), and the build goes on without it.
    assert!(stderr.is_empty(), "{stderr}");
}

/// Builds and runs a small program with `-O -C <codegen>`; returns its
/// directory (removed when dropped), the program, and what rustc printed.
fn build(codegen: &str) -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("main.rs");
    std::fs::write(&src, "fn main() { println!(\"built {}\", 42); }").unwrap();
    let exe = dir.path().join("main");
    let built = Command::new("rustc")
        .args(["-O", "-C", codegen, "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&built.stderr).into_owned();
    assert!(built.status.success(), "{stderr}");
    let ran = Command::new(&exe).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "built 42\n");
    (dir, exe, stderr)
}

/// The section names of a 64-bit little-endian ELF file.
fn section_names(elf: &[u8]) -> Vec<String> {
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([elf[at], elf[at + 1]]));
    let u64_at = |at: usize| {
        usize::try_from(u64::from_le_bytes(elf[at..at + 8].try_into().unwrap())).unwrap()
    };
    assert_eq!(&elf[..5], b"\x7fELF\x02", "a 64-bit ELF file");
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 0x18);
    (0..shnum)
        .map(|i| {
            let start = strtab
                + u32::from_le_bytes(elf[header(i)..header(i) + 4].try_into().unwrap()) as usize;
            let end = start + elf[start..].iter().position(|&b| b == 0).unwrap();
            String::from_utf8_lossy(&elf[start..end]).into_owned()
        })
        .collect()
}
