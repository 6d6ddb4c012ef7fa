//! Links optimised Linux builds of the `sidekey` binary with the functions
//! it runs packed together (`link/hot-functions.ld`, written by
//! `scripts/hot-functions`): the kernel maps code 64 KiB around each page a
//! process first runs, so packed functions keep ~1.7 MiB of the binary out
//! of the resident set. Only placement changes, never code. The script needs
//! a linker that reads `INSERT` (lld, which Rust uses by default on x86-64
//! Linux, or GNU ld); `SIDEKEY_NO_HOT_FUNCTIONS=1` links without it (gold,
//! mold).

#[allow(
    clippy::disallowed_methods,
    reason = "Cargo hands a build script its settings in the environment; the Env seam is for the binary"
)]
fn main() {
    println!("cargo:rerun-if-changed=link/hot-functions.ld");
    println!("cargo:rerun-if-env-changed=SIDEKEY_NO_HOT_FUNCTIONS");
    let var = |name| std::env::var(name).unwrap_or_default();
    let optimised = var("PROFILE") == "release";
    let wanted = var("SIDEKEY_NO_HOT_FUNCTIONS").is_empty();
    if var("CARGO_CFG_TARGET_OS") == "linux" && optimised && wanted {
        let script = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join("link/hot-functions.ld");
        println!(
            "cargo:rustc-link-arg-bin=sidekey=-Wl,-T,{}",
            script.display()
        );
    }
}
