//! Links the kernels as plain static executables: x86_64 at 1 MiB (the 32-bit PVH entry is
//! position dependent), aarch64 in QEMU virt's RAM.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    match std::env::var("TARGET").as_deref() {
        Ok("x86_64-unknown-none") => {
            println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
            println!("cargo:rustc-link-arg-bins=--no-pie");
        }
        Ok("aarch64-unknown-none") => {
            println!("cargo:rustc-link-arg-bins=-T{dir}/link-aarch64.ld");
        }
        _ => {}
    }
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=link-aarch64.ld");
}
