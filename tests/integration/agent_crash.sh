#!/usr/bin/env bash
# Crash anywhere: a create/write/pause/resume/destroy workload with the agent killed (-9) at a
# random moment, many times. After each restart: every wrenn- device belongs to a running
# sandbox, every CoW loop to a device, at most one template loop; and every byte written before
# a pause the client saw succeed reads back after resume.
here=$(dirname "$0")
source "$here/lib.sh"

# The kill moments are stratified over the first 1.5 s of a workload (one at a random moment inside
# each 1/ITERATIONS of it), so that every part of create, write, pause, resume and destroy is hit
# as evenly as the rounds allow: 30 stratified moments never leave a gap wider than 0.1 s, while
# the widest gap between 50 uniformly random ones is about 0.13 s on average.
ITERATIONS=${WRENN_CRASH_ITERATIONS:-30}
require "no wrenn- devices before the test" test -z "$(wrenn_devices)"
make_template base 16
promised=$WORK/promised  # lines "<id> <marker>": paused with this marker, acknowledged
: >"$promised"

running_ids() {
    api GET /sandboxes
    python3 -c 'import json,sys
print("\n".join(sorted(s["id"] for s in json.loads(sys.argv[1])["sandboxes"] if s["state"] == "running")))' "$BODY"
}
# One client's workload; stops at the first request that does not get the expected answer
# (the agent was killed under it).
workload() {
    local i=$1 id
    for round in 1 2 3; do
        id="k$i-$round"
        api POST /sandboxes "{\"id\": \"$id\", \"template\": \"base\"}"
        [ "$STATUS" == 201 ] || return 0
        write_marker "/dev/mapper/wrenn-$id" 2 "crash-$i-$round" 2>/dev/null || return 0
        api POST "/sandboxes/$id/pause"
        [ "$STATUS" == 200 ] || return 0
        echo "$id crash-$i-$round" >>"$promised"
        api POST "/sandboxes/$id/resume"
        [ "$STATUS" == 200 ] || return 0
        if [ $((RANDOM % 2)) -eq 0 ]; then
            api DELETE "/sandboxes/$id"
            [ "$STATUS" == 204 ] || return 0
            sed -i "/^$id /d" "$promised"
        fi
    done
}

for i in $(seq 1 "$ITERATIONS"); do
    delay=$(awk -v i="$i" -v n="$ITERATIONS" -v r="$RANDOM" 'BEGIN { printf "%.3f", (i - 1 + r / 32768) * 1.5 / n }')
    step "iteration $i of $ITERATIONS: kill at ${delay} s; $(grep -c . "$promised") paused with data on record"
    require "agent starts (iteration $i)" start_agent
    pid=$AGENT_PID
    (sleep "$delay"; kill -KILL "$pid" 2>/dev/null) &
    killer=$!
    workload "$i"
    wait "$killer"
    kill_agent
    require "agent restarts after kill -9 (iteration $i)" start_agent

    devices=$(wrenn_devices | sed 's/^wrenn-//')
    running=$(running_ids)
    expect_eq "iteration $i: devices are exactly the running sandboxes" "$devices" "$running"
    n_running=$(printf '%s' "$running" | grep -c . || true)
    expect_eq "iteration $i: one CoW loop per running sandbox" "$(loops_backed_by "$STATE/sandboxes")" "$n_running"
    tl=$(loops_backed_by "$TEMPLATES/base.img")
    expect_true "iteration $i: at most one template loop ($tl), and one if any sandbox runs" \
        test "$tl" -le 1 -a \( "$n_running" -eq 0 -o "$tl" -eq 1 \)
    # Every acknowledged pause: its data is there after (re)resume.
    while read -r id marker; do
        [ -n "$id" ] || continue
        api GET "/sandboxes/$id"
        if [ "$STATUS" != 200 ]; then
            fail "iteration $i: $id was paused with data and is gone ($STATUS)"
            continue
        fi
        if [ "$(json state)" == paused ]; then
            api POST "/sandboxes/$id/resume"
            expect_eq "iteration $i: resume $id" "$STATUS" 200
        fi
        expect_eq "iteration $i: $id data" "$(read_marker "/dev/mapper/wrenn-$id" 2 ${#marker})" "$marker"
    done <"$promised"
    kill_agent
done

# Clean end: destroy everything; nothing may be left.
require "agent starts for the final cleanup" start_agent
api GET /sandboxes
for id in $(python3 -c 'import json,sys; print(" ".join(s["id"] for s in json.loads(sys.argv[1])["sandboxes"]))' "$BODY"); do
    api DELETE "/sandboxes/$id"
    expect_eq "destroy $id" "$STATUS" 204
done
expect_eq "no wrenn- device left" "$(wrenn_devices | wc -l)" 0
expect_eq "no loop left" "$(loops_backed_by "$STATE")" 0
expect_eq "no sandbox folder left" "$(find "$STATE/sandboxes" -mindepth 1 | wc -l)" 0
expect_true "SIGTERM exits 0" stop_agent
finish
