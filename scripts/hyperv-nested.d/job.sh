#!/bin/bash
# Runs in L1 (bash, chroot of the host's / over 9p). scripts/hyperv-nested copies it into the
# run directory (here /run/canary-hvhost/run) next to
#   job.env   shell variables J_* written by the host side
#   l2.argv   L2's QEMU command line, NUL-separated
# It starts L2 with its QMP monitor on a FIFO pair, records the QMP stream in qmp.log, stops
# L2 when the run's time is up and leaves L2's exit status in l2.status.
RUN=/run/canary-hvhost/run
TMP=/run/canary-hvhost/tmp
. "$RUN/job.env"
export TMPDIR=$TMP
[ -n "$J_MODULE_DIR" ] && export QEMU_MODULE_DIR=$J_MODULE_DIR

argv=()
while IFS= read -r -d '' a; do argv+=("$a"); done < "$RUN/l2.argv"

# QEMU's "pipe" chardev opens PATH.in for reading and PATH.out for writing. Hold both FIFOs
# open here (fds 5 and 6) so that neither side's open blocks; queue qmp_capabilities (events
# are only sent after it); the reader sees EOF only once fd 6 is closed after L2 is gone.
mkfifo "$TMP/qmp.in" "$TMP/qmp.out"
exec 5<> "$TMP/qmp.in" 6<> "$TMP/qmp.out"
echo '{"execute": "qmp_capabilities"}' >&5
tr -d '\r' < "$TMP/qmp.out" > "$RUN/qmp.log" 5>&- 6>&- &
reader=$!

# Seconds left for L2: the host's deadline (epoch) against L1's clock, which L0's emulated RTC
# set from the host clock; 3 s are kept for writing back. If L1's clock looks wrong, fall back
# to the budget less L1's uptime.
now=$(date +%s)
if [ "$now" -ge "$J_START" ] && [ "$now" -le "$J_DEADLINE" ]; then
    left=$((J_DEADLINE - now - 3))
else
    left=$((J_TIMEOUT - 8 - $(cut -d. -f1 /proc/uptime)))
fi
[ "$left" -ge 1 ] || left=1
echo "$left" > "$RUN/l2-budget"

cd "$J_CWD" 2> /dev/null || cd "$RUN"
cut -d' ' -f1 /proc/uptime > "$RUN/l2-start"
timeout -k 3 "$left" "${argv[@]}" < /dev/null > "$RUN/l2-qemu.log" 2>&1 5>&- 6>&-
rc=$?
cut -d' ' -f1 /proc/uptime > "$RUN/l2-end"
exec 5>&- 6>&-
wait "$reader"
echo "$rc" > "$RUN/l2.status"
