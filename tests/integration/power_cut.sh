#!/usr/bin/env bash
# Power cut: the whole VM killed (qemu SIGKILL) at a random moment while three clients create,
# write to (4 KiB records, O_DIRECT + fsync), pause, resume and destroy sandboxes; the next boot
# over the same disks recovers, and every acknowledged write and operation holds. Two cuts:
#   boot 1  make the template, start the agent, run the workload; cut.
#   boot 2  start the agent (its own recovery), check everything boot 1 acknowledged, run the
#           workload again over the survivors; cut.
#   boot 3  wrenn-agent --cleanup-stale then serve (as the systemd units do at boot), check
#           what boot 2 left and acknowledged, destroy everything: nothing may be left.
# The checks run in the guest (tests/integration/power_cut_guest.py, which says what holds).
#
# The model of a power cut: the disks are image files that qemu writes with cache=unsafe, so
# every write qemu completed to the guest is in this host's page cache and survives qemu's
# SIGKILL (the host's kernel stays up), and nothing the guest had not been told was written is
# there. That is a disk without a volatile write cache losing power: what it acknowledged
# holds, what was in flight may or may not have landed (a 4 KiB aligned write lands whole).
# Acknowledgements leave the guest on the serial console, drained before the guest goes on,
# so everything this script reads in a boot's console log happened before the cut.
#
# Runs on the host (it boots the VM itself); fails, never skips, when the VM cannot run.
# WRENN_POWERCUT_SEED=N repeats a run: the seed picks the moments of the cuts, the workload
# and the template's bytes.
#
#   tests/integration/power_cut.sh BUILD_DIR
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
BUILD=$(cd "${1:?usage: $0 BUILD_DIR}" 2>/dev/null && pwd)
if [ ! -x "$BUILD/wrenn-agent" ]; then
    echo "FAIL: no wrenn-agent in the build folder '${1}': build it first (scripts/test builds it)" >&2
    exit 1
fi
SEED=${WRENN_POWERCUT_SEED:-$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')}
RANDOM=$SEED
# The cut comes this long after the workload's ACKS_FIRST-th acknowledgement (counted from
# there, not from the start, so that a slow machine still has sandboxes and data to lose):
# long enough for every kind of operation to be acknowledged a few times, short enough for CI.
ACKS_FIRST=8
CUT_MIN_S=1
CUT_MAX_S=9

echo "power cut: seed $SEED (repeat with WRENN_POWERCUT_SEED=$SEED)"
disks=$(mktemp -d "${TMPDIR:-/tmp}/wrenn-power-cut.XXXXXX")
vm_pid=""
cleanup() {
    if [ -n "$vm_pid" ] && kill -0 "$vm_pid" 2>/dev/null; then
        kill -KILL "$(cat "$disks/qemu.pid" 2>/dev/null)" 2>/dev/null
        wait "$vm_pid" 2>/dev/null
    fi
    rm -rf "$disks"
}
trap cleanup EXIT

die() {  # the consoles go to BUILD/power-cut-logs, to read the whole story
    echo "FAIL: $*" >&2
    rm -rf "$BUILD/power-cut-logs"
    mkdir -p "$BUILD/power-cut-logs" && cp "$disks"/boot*.log "$BUILD/power-cut-logs/" 2>/dev/null &&
        echo "the consoles of every boot are in $BUILD/power-cut-logs (seed $SEED)" >&2
    exit 1
}
show_log() {  # a boot's console: its failures, then its end
    echo "--- console of boot $1: FAIL lines ---" >&2
    grep -a '^FAIL' "$disks/boot$1.log" >&2
    echo "--- console of boot $1: last 80 lines ---" >&2
    tail -n 80 "$disks/boot$1.log" >&2
}
guest() {  # guest BOOT MODE [LOG...]: the guest's command line for one boot
    local n=$1
    shift
    echo python3 "$here/power_cut_guest.py" "$BUILD" "$SEED" "$n" "$@"
}

# boot_and_cut BOOT MODE [LOG...]: boots, waits for the workload's first acknowledgements, cuts the power at
# a random moment after, and checks that it was the cut that ended the boot.
boot_and_cut() {
    local n=$1 log=$disks/boot$1.log started=$SECONDS
    : >"$log"
    # shellcheck disable=SC2046 # guest prints words without spaces in them
    (cd "$root" && exec scripts/vm --disk-dir "$disks" --timeout 600 -- $(guest "$@")) >"$log" 2>&1 &
    vm_pid=$!
    until [ "$(acked "$log" '[a-z]*')" -ge "$ACKS_FIRST" ]; do
        if ! kill -0 "$vm_pid" 2>/dev/null; then
            wait "$vm_pid"
            local rc=$?
            vm_pid=""
            show_log "$n"
            die "boot $n ended (status $rc) before its workload had $ACKS_FIRST acknowledgements"
        fi
        [ $((SECONDS - started)) -lt 400 ] ||
            { show_log "$n"; die "boot $n: not $ACKS_FIRST acknowledgements after 400 s"; }
        sleep 0.2
    done
    local delay_ms=$((CUT_MIN_S * 1000 + RANDOM % ((CUT_MAX_S - CUT_MIN_S) * 1000)))
    local booted=$((SECONDS - started))
    sleep "$((delay_ms / 1000)).$(printf '%03d' $((delay_ms % 1000)))"
    kill -0 "$vm_pid" 2>/dev/null || { show_log "$n"; die "boot $n ended before the cut"; }
    kill -KILL "$(cat "$disks/qemu.pid")" || die "boot $n: cannot kill qemu (pid file $disks/qemu.pid)"
    wait "$vm_pid"
    vm_pid=""
    if grep -aq '^VMEXIT=' "$log"; then
        show_log "$n"
        die "boot $n: the guest finished before the cut"
    fi
    echo "boot $n ($((SECONDS - started)) s): $ACKS_FIRST acknowledgements after ${booted} s," \
        "cut $((delay_ms / 1000)).$(printf '%03d' $((delay_ms % 1000))) s later;" \
        "acknowledged: $(acked "$log" create) creates, $(acked "$log" write) writes," \
        "$(acked "$log" pause) pauses, $(acked "$log" resume) resumes, $(acked "$log" destroy) destroys"
    grep -a '^PC INFO' "$log"
}
acked() { grep -ac "^PC DONE [^ ]* $2 .* END\$" "$1"; }

boot_and_cut 1 work
boot_and_cut 2 check-work "$disks/boot1.log"

log=$disks/boot3.log
started=$SECONDS
# shellcheck disable=SC2046
(cd "$root" && exec scripts/vm --disk-dir "$disks" --timeout 600 -- \
    $(guest 3 check-finish "$disks/boot1.log" "$disks/boot2.log")) >"$log" 2>&1
rc=$?
grep -a '^PC INFO' "$log"
if [ "$rc" -ne 0 ] || ! grep -aq '^PC RESULT passed$' "$log"; then
    show_log 3
    die "boot 3: the check after the second cut failed (status $rc)"
fi
echo "boot 3 ($((SECONDS - started)) s): checked, and destroying everything left nothing"
echo "power cut: passed (seed $SEED, ${SECONDS} s)"
