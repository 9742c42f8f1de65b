//! The canary unikernel. On a hosted target this builds as a stub so the workspace checks.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![cfg_attr(target_os = "uefi", no_std, no_main)]

#[cfg(not(any(target_os = "none", target_os = "uefi")))]
fn main() {
    eprintln!("appliance is a kernel: build it with scripts/qemu-run or --target x86_64-unknown-none");
}
