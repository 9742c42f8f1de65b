//! aarch64 support (QEMU `virt` direct boot via the arm64 Image header, and UEFI): taken by the aarch64 engineer, work in progress.
