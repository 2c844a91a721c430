# Helpers for the shell integration tests: they run as root in a kernel with device-mapper
# (tests/in-kernel puts them there), drive the real wrenn-agent binary over its API (client.py
# for most calls, curl where a test needs what only curl sends), and check what a user would:
# status codes, devices, loops, bytes read back.
# Usage: source this, then call start_agent, api, expect_*; finish with `finish`.
#
# systemd-udevd runs while the test does, as on a production host: udev's dm rules then make and
# remove the /dev/mapper nodes and libdm waits for them (SysV semaphore cookies). With
# WRENN_TEST_UDEV=0 (ctest's "(no udev)" runs) udev must not run, and libdm makes the nodes itself.

set -uo pipefail
LIB_DIR=$(dirname "${BASH_SOURCE[0]}")

BUILD=${1:?usage: $0 BUILD_DIR}
AGENT="$BUILD/wrenn-agent"
PREFIX=${WRENN_TEST_PREFIX:-t$$x}
WORK=/scratch/$PREFIX
STATE=$WORK/state
TEMPLATES=$STATE/templates
PORT=${WRENN_TEST_PORT:-7070}
# A test that also puts a state dir on ext4 (scripts/vm mounts one at /scratch-ext4) uses this.
EXT4_WORK=/scratch-ext4/$PREFIX
# The agent listens where it does by default, on a unix socket (per test, under $WORK); api and
# start_agent call it through CURL and URL, which a test may point at a TCP listener instead.
SOCK=$WORK/agent.sock
LISTEN=(--listen "unix:$SOCK")
CURL=(curl --unix-socket "$SOCK")
URL=http://localhost
AGENT_PID=""
AGENT_LOG=$WORK/agent.log
PASSED=0
FAILED=0
UDEV=${WRENN_TEST_UDEV:-1}
UDEV_STARTED=0

mkdir -p "$TEMPLATES"

step() {  # progress on the console, with the time, so a slow or stuck run shows where it is
    printf '== %(%T)T %s\n' -1 "$*"
}
fail() {
    echo "FAIL: $*" >&2
    FAILED=$((FAILED + 1))
}
pass() {
    PASSED=$((PASSED + 1))
}
expect_eq() {  # what actual expected
    if [ "$2" == "$3" ]; then pass; else fail "$1: got '$2', expected '$3'"; fi
}
expect_true() {  # what command...
    local what=$1
    shift
    if "$@"; then pass; else fail "$what"; fi
}
# A fatal check: the rest of the test makes no sense without it.
require() {
    local what=$1
    shift
    if ! "$@"; then
        fail "$what (fatal)"
        finish
    fi
    pass
}

# The test's one client process (client.py): requests to the agent's unix socket, JSON fields
# and record checks, without a program per call. Under TCG each program started costs 0.04 to
# 0.3 s (curl and jq about 0.3 s), and the suites make hundreds of calls.
# It starts when lib.sh is sourced, and ends when the test does (its stdin closes).
start_client() {
    mkfifo "$WORK/client.in" "$WORK/client.out"
    python3 "$LIB_DIR/client.py" <"$WORK/client.in" >"$WORK/client.out" &
    exec {CLIENT_W}>"$WORK/client.in" {CLIENT_R}<"$WORK/client.out"
}
# client CMD ARG... PAYLOAD: sets CODE and OUT (CMD's answer; see client.py).
client() {
    local LC_ALL=C payload=${*: -1} n  # read -N counts bytes only in the C locale
    printf '%s %d\n%s' "${*:1:$#-1}" "${#payload}" "$payload" >&"$CLIENT_W"
    OUT=""
    read -r CODE n <&"$CLIENT_R" || { CODE=999 OUT="the test's client.py is gone"; return 2; }
    [ "$n" -eq 0 ] || read -r -d '' -N "$n" OUT <&"$CLIENT_R"
}

# api METHOD PATH [BODY]: sets STATUS and BODY (000 and nothing when no answer came, as curl's
# -w '%{http_code}'). Through client.py while CURL is plain `curl --unix-socket SOCK`; a test
# that gives curl more (TCP, a token header) is served by curl itself.
plain_curl() {  # true when CURL is plain `curl --unix-socket SOCK`
    [ ${#CURL[@]} -eq 3 ] && [ "${CURL[0]} ${CURL[1]}" == "curl --unix-socket" ]
}
api() {
    local method=$1 path=$2 data=${3:-} out
    if plain_curl; then
        client http "${CURL[2]}" "$method" "$path" "$data"
        STATUS=$CODE
        BODY=$OUT
    else
        local args=(-s -w '\n%{http_code}' -X "$method" --max-time 60)
        if [ -n "$data" ]; then
            args+=(-H 'Content-Type: application/json' -d "$data")
        fi
        out=$("${CURL[@]}" "${args[@]}" "$URL$path")
        STATUS=${out##*$'\n'}
        BODY=${out%$'\n'*}
    fi
    while [[ "$BODY" == *$'\n' ]]; do BODY=${BODY%$'\n'}; done
}
# json FIELD: a top-level or dotted field of BODY ("templates.0.sha256"), as jq -r prints it
# (true, false; nothing for null, absent or an empty BODY). A BODY that is not JSON prints
# client.py's error, which no check expects.
json() {
    client json "$1" "$BODY"
    printf '%s\n' "$OUT"
}
# blocks_digest FILE: the template digest the agent must name for FILE, computed independently.
blocks_digest() { python3 "$(dirname "${BASH_SOURCE[0]}")/blocks_digest.py" "$1"; }
# known_digest PATH FIELD: GETs PATH until FIELD is no longer "pending" (at most 120 s), then
# prints it. The agent reads a new template version's digest in the background.
known_digest() {
    local i value=pending
    for i in $(seq 240); do
        api GET "$1"
        value=$(json "$2")
        [ "$value" != pending ] && break
        sleep 0.5
    done
    printf '%s\n' "$value"
}
# ids [STATE]: the ids in BODY's sandbox list (those in STATE only, if given), sorted, one a line.
ids() {
    client ids "${1:--}" "$BODY"
    printf '%s' "$OUT"
}

start_agent() {
    "$AGENT" serve "${LISTEN[@]}" --state-dir "$STATE" --templates-dir "$TEMPLATES" \
        --log-level debug "$@" \
        >>"$AGENT_LOG" 2>&1 &
    AGENT_PID=$!
    if plain_curl; then
        await_agent "${CURL[2]}" "$AGENT_PID" "$AGENT_LOG"
        return
    fi
    for _ in $(seq 1 100); do
        if "${CURL[@]}" -s -o /dev/null --max-time 1 "$URL/healthz"; then
            return 0
        fi
        if ! kill -0 "$AGENT_PID" 2>/dev/null; then
            echo "agent exited at start; its log:" >&2
            cat "$AGENT_LOG" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "agent did not answer within 10 s" >&2
    return 1
}
# await_agent SOCK PID LOG: waits (client.py, up to 10 s) until the agent PID answers on SOCK;
# if it does not, says why and prints its LOG.
await_agent() {
    client health "$1" "$2" ""
    [ "$CODE" == 000 ] && return 0
    echo "$OUT; its log:" >&2
    cat "$3" >&2
    return 1
}
stop_agent() {  # SIGTERM, and check it exits 0
    [ -n "$AGENT_PID" ] || return 0
    kill -TERM "$AGENT_PID"
    wait "$AGENT_PID"
    local rc=$?
    AGENT_PID=""
    return $rc
}
kill_agent() {
    [ -n "$AGENT_PID" ] || return 0
    kill -KILL "$AGENT_PID"
    wait "$AGENT_PID" 2>/dev/null
    AGENT_PID=""
}

# Kernel facts, read straight from the kernel.
wrenn_devices() { dmsetup ls 2>/dev/null | awk '$1 ~ /^wrenn-/ {print $1}' | sort; }
# The loops, as "/dev/loopN backing-file" lines; read with builtins (no program per loop: a suite
# with 64 sandboxes has over a hundred loops, and under TCG each program costs about 0.1 s).
loops() {
    local f b n
    for f in /sys/block/loop*/loop/backing_file; do
        [ -e "$f" ] && read -r b <"$f" || continue
        n=${f#/sys/block/}
        echo "/dev/${n%%/*} $b"
    done
}
loops_backed_by() {  # loops whose backing file is $1 (exact) or under $1/
    local dev b n=0
    while read -r dev b; do
        case "$b" in "$1" | "$1"/*) n=$((n + 1)) ;; esac
    done < <(loops)
    echo $n
}
loops_dio() {  # the distinct /sys/block/loopN/loop/dio values of loops_backed_by $1 ("0", "1", "0 1")
    local dev b
    while read -r dev b; do
        case "$b" in "$1" | "$1"/*) cat "/sys/block/${dev#/dev/}/loop/dio" ;; esac
    done < <(loops) | sort -u | paste -sd ' ' -
}
loop_of() {  # the one loop device backed by exactly $1
    local dev b
    while read -r dev b; do
        if [ "$b" == "$1" ]; then
            echo "$dev"
            return
        fi
    done < <(loops)
}
# write_marker DEV OFFSET_MIB TEXT / read_marker DEV OFFSET_MIB LEN
write_marker() {
    printf '%s' "$3" | dd of="$1" bs=1M seek="$2" conv=notrunc,fsync status=none
}
read_marker() {
    dd if="$1" bs=1M skip="$2" count=1 iflag=direct status=none | head -c "$3"
}

# A writer whose acknowledged records can be checked later (fork, export of a running sandbox).
ACKS=$WORK/acks
REC=4096  # one record per 4 KiB block: "record N" at block N

record_at() {  # DEV N: the record in block N, or nothing
    dd if="$1" bs=$REC skip="$2" count=1 iflag=direct status=none | tr -d '\0' | head -c 32
}
# records_in DEV FIRST LAST: how many blocks N from FIRST to LAST hold exactly "record N" (one
# client.py call for the whole range, read with O_DIRECT as record_at reads one block).
records_in() {
    client records "$1" "$2" "$3" ""
    [ "$CODE" == 000 ] || { echo "records_in $*: $OUT" >&2; return 1; }
    echo "$OUT"
}
# writer DEV FIRST: writes "record N" with O_DIRECT|O_DSYNC from block FIRST on, and appends N
# to $ACKS once the write returned (acknowledged), until $WORK/stop exists.
writer() {
    local dev=$1 n=$2
    : >"$ACKS"
    while [ ! -e "$WORK/stop" ]; do
        printf 'record %d' "$n" | dd of="$dev" bs=$REC seek="$n" oflag=direct,dsync conv=sync,notrunc \
            status=none || return 1
        echo "$n" >>"$ACKS"
        n=$((n + 1))
    done
}
last_ack() {
    local n
    n=$(tail -n 1 "$ACKS" 2>/dev/null)
    echo "${n:--1}"
}

make_template() {  # name size_mib: random bytes, so every read is checked against the image
    head -c "$(($2 * 1024 * 1024))" /dev/urandom >"$TEMPLATES/$1.img"
}

finish() {
    kill_agent
    local w
    for w in "$WORK" "$EXT4_WORK"; do
        for m in $(awk -v w="$w" '$2 ~ "^"w {print $2}' /proc/mounts | sort -r); do umount -l "$m"; done
    done
    # Our strays: every wrenn- device and every loop over our files goes, whatever happened.
    for d in $(wrenn_devices); do dmsetup remove --retry "$d" >/dev/null 2>&1; done
    local dev b
    while read -r dev b; do
        case "$b" in "$WORK"/* | "$EXT4_WORK"/*) losetup -d "$dev" 2>/dev/null ;; esac
    done < <(loops)
    [ "$UDEV_STARTED" -eq 1 ] && udevadm control --exit >/dev/null 2>&1
    if [ "$FAILED" -ne 0 ]; then
        echo "--- agent log (last 60 lines) ---" >&2
        tail -n 60 "$AGENT_LOG" >&2
    fi
    rm -rf "$WORK" "$EXT4_WORK"
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ] && [ "$PASSED" -gt 0 ]
    exit $?
}

semaphores() { ipcs -s | grep -c '^0x'; }  # SysV semaphore sets: libdm's udev cookies use them

# The udev mode of this run (see the header). Natively, a host's own udev is used, never stopped.
if [ "$UDEV" == 1 ]; then
    if [ ! -S /run/udev/control ]; then
        step "start systemd-udevd"
        mkdir -p /run/udev
        require "systemd-udevd starts" /lib/systemd/systemd-udevd --daemon
        UDEV_STARTED=1
        # The block devices present (a host's udev has seen its disks at boot): the agent's loops
        # and dm devices come later, as events of their own. All of the guest's other devices
        # would add about 10 s per boot under TCG and nothing these tests look at.
        udevadm trigger --action=add --subsystem-match=block >/dev/null 2>&1
        udevadm settle --timeout=60
    fi
    require "udev's control socket exists (the agent's sign that udev runs)" test -S /run/udev/control
else
    require "systemd-udevd is not running (this is the no-udev run)" test ! -S /run/udev/control
fi
start_client
