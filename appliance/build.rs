//! Passes the linker script for the bare-metal kernel targets, and a build id.
use std::path::Path;
use std::process::Command;

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    println!("cargo:rustc-check-cfg=cfg(kernel)");
    if target.ends_with("-unknown-none") || target.ends_with("-unknown-uefi") {
        println!("cargo:rustc-cfg=kernel");
    }
    let script = match target.as_str() {
        "x86_64-unknown-none" => Some("x86_64.ld"),
        "aarch64-unknown-none" => Some("aarch64.ld"),
        _ => None,
    };
    if let Some(s) = script {
        println!("cargo:rustc-link-arg-bin=appliance=-T{dir}/link/{s}");
        // x86_64-unknown-none links a static PIE by default; the boot code is position
        // dependent (32-bit PVH entry), so link a plain static executable.
        println!("cargo:rustc-link-arg-bins=--no-pie");
        // A GNU build id (SHA-1 of the output) in `.note.gnu.build-id`: the crash record
        // carries it (src/image_id.rs) and `host-collector symbols` files debug info by it.
        println!("cargo:rustc-link-arg-bin=appliance=--build-id=sha1");
        println!("cargo:rerun-if-changed=link/{s}");
    }
    if target == "x86_64-unknown-none" {
        // The test loader for the 64-bit Linux boot entry (src/bin/linux64-shim.rs).
        println!("cargo:rustc-link-arg-bin=linux64-shim=-T{dir}/link/linux64-shim.ld");
        println!("cargo:rerun-if-changed=link/linux64-shim.ld");
    }
    // Build id: the git commit of the tree, or "unknown" (no network, just the local repo).
    let id = Command::new("git")
        .args(["describe", "--always", "--abbrev=12"])
        .current_dir(Path::new(&dir))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CANARY_BUILD_ID={id}");
    // A new commit changes the id (the working tree's dirtiness is not tracked).
    if let Some(git_dir) = Command::new("git")
        .args(["rev-parse", "--absolute-git-dir"])
        .current_dir(Path::new(&dir))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
    {
        let g = git_dir.trim();
        println!("cargo:rerun-if-changed={g}/HEAD");
        println!("cargo:rerun-if-changed={g}/refs/heads");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CANARY_BUILD_ID");
}
