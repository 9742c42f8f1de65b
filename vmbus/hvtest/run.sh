#!/usr/bin/env bash
# Build vmbus-hvtest and run it on the nested real host (KVM Hyper-V + QEMU VMBus) with QEMU
# 10's hv-balloon device, so GPADL/OPEN/ring/CLOSE run against host code we did not write.
#   vmbus/hvtest/run.sh [extra scripts/hyperv-nested run options]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
(cd "$here" && cargo build --release)
exec "$here/../../scripts/hyperv-nested" run --balloon -t 180 "$@" -- \
  "$here/target/x86_64-unknown-none/release/vmbus-hvtest" -action panic=none
