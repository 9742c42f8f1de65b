//! vmbus-hvtest: minimal kernels that run the vmbus guest stack on real hosts.
//! - x86_64 ([`x86`]): on the nested KVM Hyper-V + QEMU VMBus host (scripts/hyperv-nested).
//! - aarch64 ([`arm`]): on plain QEMU virt (no Hyper-V): the real `hvc #0` conduit must
//!   answer the PSCI/SMCCC probe and detection must say "not Hyper-V" without faulting.
#![no_std]
#![no_main]

#[cfg(target_arch = "aarch64")]
mod arm;
#[cfg(target_arch = "x86_64")]
mod x86;
