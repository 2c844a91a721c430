#!/usr/bin/env bash
# One agent per state dir, and agents with different state dirs on one host: a second agent
# (or --cleanup-stale) on a state dir in use exits non-zero at once and touches nothing; two
# agents with their own state dirs and sandboxes never remove each other's devices, across
# SIGTERM and kill -9 restarts of both and a --cleanup-stale of either.
here=$(dirname "$0")
source "$here/lib.sh"

STATE_A=$WORK/a
STATE_B=$WORK/b
declare -A PIDS=()

# Our agents are ours to kill when the test ends early (finish calls kill_agent).
eval "lib_kill_agent() $(declare -f kill_agent | tail -n +2)"
kill_agent() {
    lib_kill_agent
    local name
    for name in "${!PIDS[@]}"; do
        kill -KILL "${PIDS[$name]}" 2>/dev/null
        wait "${PIDS[$name]}" 2>/dev/null
        unset "PIDS[$name]"
    done
}

state_of() { [ "$1" == a ] && echo "$STATE_A" || echo "$STATE_B"; }
sock_of() { echo "$WORK/agent-$1.sock"; }

start_at() {  # a|b: serve on its own state dir and address
    local name=$1 state sock
    state=$(state_of "$name")
    sock=$(sock_of "$name")
    "$AGENT" serve --listen "unix:$sock" --state-dir "$state" --log-level debug \
        >>"$WORK/agent-$name.log" 2>&1 &
    PIDS[$name]=$!
    await_agent "$sock" "${PIDS[$name]}" "$WORK/agent-$name.log"
}
stop_at() {  # a|b TERM|KILL; TERM must exit 0
    local name=$1 rc
    kill "-$2" "${PIDS[$name]}"
    wait "${PIDS[$name]}" 2>/dev/null
    rc=$?
    unset "PIDS[$name]"
    [ "$2" == KILL ] || [ $rc -eq 0 ]
}
api_at() {  # a|b METHOD PATH [BODY]: sets STATUS and BODY
    local CURL=(curl --unix-socket "$(sock_of "$1")")
    shift
    api "$@"
}
# What a user would compare: the devices with their tables, and every record's bytes.
facts() {
    dmsetup table 2>/dev/null | grep '^wrenn-' | sort
    find "$STATE_A" "$STATE_B" -name sandbox.json -print0 2>/dev/null | sort -z | xargs -0 -r md5sum
}
data_of() { read_marker "/dev/mapper/wrenn-$1" 3 ${#2}; }

require "no wrenn- devices before the test" test -z "$(wrenn_devices)"
mkdir -p "$STATE_A/templates" "$STATE_B/templates"
head -c $((16 << 20)) /dev/urandom >"$STATE_A/templates/base.img"
head -c $((16 << 20)) /dev/urandom >"$STATE_B/templates/base.img"

step "agent a with a running and a paused sandbox"
require "agent a starts" start_at a
for id in a1 a2; do
    api_at a POST /sandboxes "{\"id\": \"$id\", \"template\": \"base\"}"
    require "create $id" test "$STATUS" == 201
    write_marker "/dev/mapper/wrenn-$id" 3 "data-of-$id"
done
api_at a POST /sandboxes/a2/pause
expect_eq "pause a2" "$STATUS" 200
# The template's digest, read in the background, is the records' last write.
for id in a1 a2; do
    expect_true "$id's template digest is known" \
        test "$(CURL=(curl --unix-socket "$(sock_of a)"); known_digest "/sandboxes/$id" template_digest)" != pending
done

step "a second agent and a --cleanup-stale on a's state dir are refused at once"
before=$(facts)
# "At once" against what merely starting the binary costs here (seconds under a loaded TCG VM):
# a serve that waited for the lock would run into the timeout instead.
start=$(date +%s%N)
"$AGENT" --version >/dev/null
baseline_ms=$((($(date +%s%N) - start) / 1000000))
start=$(date +%s%N)
timeout 60 "$AGENT" serve --listen "unix:$WORK/agent-second.sock" --state-dir "$STATE_A" \
    >"$WORK/second.log" 2>&1
rc=$?
took_ms=$((($(date +%s%N) - start) / 1000000))
expect_true "second serve exits non-zero, without waiting for the timeout (rc $rc)" \
    test "$rc" -ne 0 -a "$rc" -ne 124
expect_true "second serve exits at once (${took_ms} ms; starting the binary: ${baseline_ms} ms)" \
    test "$took_ms" -lt $((baseline_ms + 5000))
expect_true "second serve names the holder's pid: $(cat "$WORK/second.log")" \
    grep -qF "pid ${PIDS[a]})" "$WORK/second.log"
expect_true "second serve names the state dir" grep -qF "$STATE_A" "$WORK/second.log"
timeout 60 "$AGENT" --cleanup-stale --state-dir "$STATE_A" >"$WORK/second-cleanup.log" 2>&1
rc=$?
expect_true "second --cleanup-stale exits non-zero, without waiting (rc $rc)" \
    test "$rc" -ne 0 -a "$rc" -ne 124
expect_true "second --cleanup-stale names the holder's pid: $(cat "$WORK/second-cleanup.log")" \
    grep -q "pid ${PIDS[a]}" "$WORK/second-cleanup.log"
expect_eq "devices and records unchanged by the refused agents" "$(facts)" "$before"
api_at a GET /sandboxes/a1
expect_eq "agent a still serves a1 running" "$STATUS/$(json state)" "200/running"
expect_eq "a1's data" "$(data_of a1 data-of-a1)" "data-of-a1"

step "agent b with its own state dir and sandboxes"
require "agent b starts" start_at b
for id in b1 b2; do
    api_at b POST /sandboxes "{\"id\": \"$id\", \"template\": \"base\"}"
    require "create $id" test "$STATUS" == 201
    write_marker "/dev/mapper/wrenn-$id" 3 "data-of-$id"
done
api_at b POST /sandboxes/b2/pause
expect_eq "pause b2" "$STATUS" 200
expect_eq "both agents' running devices" "$(wrenn_devices | tr '\n' ' ')" "wrenn-a1 wrenn-b1 "

check_both() {  # what: both running sandboxes are up with their data
    expect_eq "$1: devices" "$(wrenn_devices | tr '\n' ' ')" "wrenn-a1 wrenn-b1 "
    expect_eq "$1: a1's data" "$(data_of a1 data-of-a1)" "data-of-a1"
    expect_eq "$1: b1's data" "$(data_of b1 data-of-b1)" "data-of-b1"
}

step "restarts of both, by SIGTERM and by kill -9"
expect_true "agent a stops on SIGTERM" stop_at a TERM
require "agent a restarts" start_at a
check_both "a restarted after SIGTERM"
api_at a GET /sandboxes/a1
expect_eq "a adopted a1" "$(json state)" running
expect_true "agent b killed" stop_at b KILL
require "agent b restarts after kill -9" start_at b
check_both "b restarted after kill -9"
api_at b GET /sandboxes/b1
expect_eq "b adopted b1" "$(json state)" running
expect_true "agent a killed" stop_at a KILL
expect_true "agent b stops on SIGTERM" stop_at b TERM
require "agent b starts while a is down" start_at b
require "agent a starts after kill -9" start_at a
check_both "both restarted"
expect_true "a's log says it left b's device alone" \
    grep -q "sandbox=b1 .*another state dir" "$WORK/agent-a.log"

step "--cleanup-stale of b removes b's devices only"
expect_true "agent b stops on SIGTERM" stop_at b TERM
"$AGENT" --cleanup-stale --state-dir "$STATE_B" >>"$WORK/agent-b.log" 2>&1
expect_eq "cleanup-stale of b exits 0" "$?" 0
expect_eq "only a's device is left" "$(wrenn_devices | tr '\n' ' ')" "wrenn-a1 "
expect_eq "a1's data after b's cleanup" "$(data_of a1 data-of-a1)" "data-of-a1"
api_at a GET /sandboxes/a1
expect_eq "a1 still running" "$STATUS/$(json state)" "200/running"
require "agent b starts after its cleanup" start_at b
api_at b POST /sandboxes/b1/resume
expect_eq "resume b1" "$STATUS" 200
expect_eq "b1's data after cleanup and resume" "$(data_of b1 data-of-b1)" "data-of-b1"

step "--cleanup-stale of a (after kill -9) removes a's devices only"
expect_true "agent a killed" stop_at a KILL
"$AGENT" --cleanup-stale --state-dir "$STATE_A" >>"$WORK/agent-a.log" 2>&1
expect_eq "cleanup-stale of a exits 0" "$?" 0
expect_eq "only b's device is left" "$(wrenn_devices | tr '\n' ' ')" "wrenn-b1 "
expect_eq "b1's data after a's cleanup" "$(data_of b1 data-of-b1)" "data-of-b1"
require "agent a starts after its cleanup" start_at a
for id in a1 a2; do
    api_at a POST "/sandboxes/$id/resume"
    expect_eq "resume $id" "$STATUS" 200
    expect_eq "$id's data" "$(data_of "$id" "data-of-$id")" "data-of-$id"
done
api_at b POST /sandboxes/b2/resume
expect_eq "resume b2" "$STATUS" 200
expect_eq "b2's data" "$(data_of b2 data-of-b2)" "data-of-b2"

step "destroy everything; nothing left"
for id in a1 a2; do
    api_at a DELETE "/sandboxes/$id"
    expect_eq "destroy $id" "$STATUS" 204
done
for id in b1 b2; do
    api_at b DELETE "/sandboxes/$id"
    expect_eq "destroy $id" "$STATUS" 204
done
expect_eq "no wrenn- device left" "$(wrenn_devices | wc -l)" 0
expect_true "agent a stops on SIGTERM" stop_at a TERM
expect_true "agent b stops on SIGTERM" stop_at b TERM
expect_eq "no loop left" "$(loops_backed_by "$WORK")" 0
if [ "$FAILED" -ne 0 ]; then
    for name in a b; do
        echo "--- agent $name log (last 40 lines) ---" >&2
        tail -n 40 "$WORK/agent-$name.log" >&2
    done
fi
finish
