#!/usr/bin/env bash
# Crash anywhere: a create/write/pause/resume/destroy workload with the agent killed (-9) at
# moments spread over one round of it, many times. After each restart: every wrenn- device
# belongs to a running sandbox, every CoW loop to a device, at most one template loop; and every
# byte written before a pause the client saw succeed reads back after resume.
here=$(dirname "$0")
source "$here/lib.sh"

# The kill moments are stratified over the window (one at a random moment inside each
# 1/ITERATIONS of it), so that every part of create, write, pause, resume and destroy is hit as
# evenly as the rounds allow: 20 stratified moments never leave a gap wider than 1/10 of the
# window, about the widest gap between 50 uniformly random ones on average (1/11). Each
# iteration costs about the window plus a resume and read of every sandbox on record, so more
# would cost CI minutes for little.
ITERATIONS=${WRENN_CRASH_ITERATIONS:-20}
KEEP=4  # sandboxes on record carried from one iteration to the next
require "no wrenn- devices before the test" test -z "$(wrenn_devices)"
make_template base 16
promised=$WORK/promised  # lines "<id> <marker>": paused with this marker, acknowledged
: >"$promised"
# Ids whose destroy was sent and not acknowledged: the agent may have been killed before or
# after it took effect, so such a sandbox may be gone after the restart, or still there with
# its data.
destroying=$WORK/destroying
: >"$destroying"

running_ids() {
    api GET /sandboxes
    ids running
}
# One round: create, write, pause (its data then on record), resume, and destroy if $3 is 1.
# Returns 1 at the first answer that is not the expected one (the agent was killed under it).
round() {  # id marker destroy
    local id=$1 marker=$2
    api POST /sandboxes "{\"id\": \"$id\", \"template\": \"base\"}"
    [ "$STATUS" == 201 ] || return 1
    write_marker "/dev/mapper/wrenn-$id" 2 "$marker" 2>/dev/null || return 1
    api POST "/sandboxes/$id/pause"
    [ "$STATUS" == 200 ] || return 1
    echo "$id $marker" >>"$promised"
    api POST "/sandboxes/$id/resume"
    [ "$STATUS" == 200 ] || return 1
    if [ "$3" == 1 ]; then
        echo "$id" >>"$destroying"
        api DELETE "/sandboxes/$id"
        [ "$STATUS" == 204 ] || return 1
        sed -i "/^$id /d" "$promised"
        sed -i "/^$id\$/d" "$destroying"
    fi
}
# One client's workload: three rounds, each sandbox kept or destroyed at random.
workload() {
    for r in 1 2 3; do
        round "k$1-$r" "crash-$1-$r" $((RANDOM % 2)) || return 0
    done
}

# The kill window is measured, not guessed: one uninterrupted round, timed, and 1.2 times that.
# On a loaded machine a fixed window would end before the first pause and test only creates.
require "agent starts (the timed round)" start_agent
begin=$(date +%s.%N)
require "an uninterrupted round: create, write, pause, resume, destroy" round timed timed-round 1
window=$(awk -v a="$begin" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", (b - a) * 1.2 }')
kill_agent

for i in $(seq 1 "$ITERATIONS"); do
    delay=$(awk -v i="$i" -v n="$ITERATIONS" -v w="$window" -v r="$RANDOM" \
        'BEGIN { printf "%.3f", (i - 1 + r / 32768) * w / n }')
    step "iteration $i of $ITERATIONS: kill at $delay s of $window s;" \
        "$(grep -c . "$promised") paused with data on record"
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
        if [ "$STATUS" == 404 ] && grep -qx "$id" "$destroying"; then
            step "iteration $i: $id is gone: its unacknowledged destroy took effect"
            sed -i "/^$id /d" "$promised"
            sed -i "/^$id\$/d" "$destroying"
            continue
        fi
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
    # The oldest beyond KEEP go: each one on record costs every later iteration a check (about
    # 6 s under TCG), and a few carried through restarts test what many would.
    while [ "$(grep -c . "$promised")" -gt "$KEEP" ]; do
        id=$(head -n 1 "$promised" | cut -d' ' -f1)
        api DELETE "/sandboxes/$id"
        expect_eq "iteration $i: destroy the oldest on record, $id" "$STATUS" 204
        sed -i "/^$id /d" "$promised"
    done
    kill_agent
done

# Clean end: destroy everything; nothing may be left.
require "agent starts for the final cleanup" start_agent
api GET /sandboxes
for id in $(ids); do
    api DELETE "/sandboxes/$id"
    expect_eq "destroy $id" "$STATUS" 204
done
expect_eq "no wrenn- device left" "$(wrenn_devices | wc -l)" 0
expect_eq "no loop left" "$(loops_backed_by "$STATE")" 0
expect_eq "no sandbox folder left" "$(find "$STATE/sandboxes" -mindepth 1 | wc -l)" 0
expect_true "SIGTERM exits 0" stop_agent
finish
