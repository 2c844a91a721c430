#!/usr/bin/env bash
# Concurrency: 64 creates in parallel on one template, then parallel pause/resume/destroy mixes
# on the same and on different sandboxes. No deadlock (every request answers within 120 s),
# no leak (nothing left at the end), every response one of the expected ones.
here=$(dirname "$0")
source "$here/lib.sh"

N=${WRENN_CONCURRENCY:-64}
require "no wrenn- devices before the test" test -z "$(wrenn_devices)"
make_template base 32
require "agent starts" start_agent

out=$WORK/responses
mkdir -p "$out"
# call NAME METHOD PATH [BODY]: queues a request; wait_calls sends every queued one at once (one
# thread each in the test's client.py, all let go at once) and waits for all the
# answers, leaving each status in $out/NAME and each body in $out/NAME.body.
CALLS=""
call() {
    CALLS+="$*"$'\n'
}
wait_calls() {
    client batch "$SOCK" "$out" "$CALLS"
    [ "$CODE" == 000 ] || fail "batch of requests: $OUT"
    CALLS=""
}
count_status() {  # prefix status
    local n=0 f s
    for f in "$out/$1"*; do
        case "$f" in *.body) continue ;; esac
        read -r s <"$f"  # curl's -w wrote no newline: read says so, and s has the status
        [ "$s" == "$2" ] && n=$((n + 1))
    done
    echo $n
}

step "$N creates at once"
# --- 64 creates at once --------------------------------------------------------------------------
for i in $(seq 1 "$N"); do
    call "create-$i" POST /sandboxes "{\"id\": \"c$i\", \"template\": \"base\"}"
done
wait_calls
expect_eq "all $N creates answered 201" "$(count_status create- 201)" "$N"
expect_eq "$N devices" "$(wrenn_devices | wc -l)" "$N"
expect_eq "one template loop for $N sandboxes" "$(loops_backed_by "$TEMPLATES/base.img")" 1
expect_eq "$N CoW loops" "$(loops_backed_by "$STATE/sandboxes")" "$N"

step "racing creates of one id"
# --- a duplicate create racing the same id: exactly one wins ------------------------------------
for k in 1 2 3 4; do
    call "dup-$k" POST /sandboxes '{"id": "dup", "template": "base"}'
done
wait_calls
expect_eq "one of four racing creates of one id wins" "$(count_status dup- 201)" 1
expect_eq "the other three are already_exists" "$(count_status dup- 409)" 3

step "racing pauses"
# --- the same sandbox: two pauses at once, one wins, the other is invalid_state ----------------
for i in $(seq 1 8); do
    call "samepause-$i-a" POST "/sandboxes/c$i/pause"
    call "samepause-$i-b" POST "/sandboxes/c$i/pause"
done
wait_calls
expect_eq "one of each pair of racing pauses wins" "$(count_status samepause- 200)" 8
expect_eq "the other is 409" "$(count_status samepause- 409)" 8

step "mix on different sandboxes"
# --- a mix on different sandboxes: pause the even ones, resume the first 8, GET the rest -------
for i in $(seq 10 2 "$N"); do call "pause-$i" POST "/sandboxes/c$i/pause"; done
for i in $(seq 1 8); do call "resume-$i" POST "/sandboxes/c$i/resume"; done
for i in $(seq 9 2 "$N"); do call "get-$i" GET "/sandboxes/c$i"; done
call list GET /sandboxes
wait_calls
expect_eq "pauses of different sandboxes" "$(count_status pause- 200)" "$(seq 10 2 "$N" | wc -l)"
expect_eq "resumes" "$(count_status resume- 200)" 8
expect_eq "GETs during the mix" "$(count_status get- 200)" "$(seq 9 2 "$N" | wc -l)"
expect_eq "list during the mix" "$(cat "$out/list")" 200

step "mix on the same sandboxes"
# --- pause, resume and destroy on the same sandbox at once: serialized, consistent --------------
for i in $(seq 10 2 24); do
    call "mixed-$i-resume" POST "/sandboxes/c$i/resume"
    call "mixed-$i-destroy" DELETE "/sandboxes/c$i"
    call "mixed-$i-get" GET "/sandboxes/c$i"
done
wait_calls
for i in $(seq 10 2 24); do
    r=$(cat "$out/mixed-$i-resume") d=$(cat "$out/mixed-$i-destroy")
    # Either order is fine: resume then destroy (200, 204) or destroy then resume (404, 204).
    expect_true "c$i resume ($r) and destroy ($d) in some order" \
        test "$d" == 204 -a \( "$r" == 200 -o "$r" == 404 \)
    g=$(cat "$out/mixed-$i-get")
    expect_true "c$i GET during the mix answered 200 or 404 ($g)" test "$g" == 200 -o "$g" == 404
done

step "destroy all"
# --- destroy everything in parallel --------------------------------------------------------------
api GET /sandboxes
all=$(ids)
for id in $all; do call "destroy-$id" DELETE "/sandboxes/$id"; done
wait_calls
expect_eq "every destroy answered 204" "$(count_status destroy- 204)" "$(echo $all | wc -w)"
api GET /sandboxes
expect_eq "no sandbox left" "$BODY" '{"sandboxes":[]}'
expect_eq "no wrenn- device left" "$(wrenn_devices | wc -l)" 0
expect_eq "no loop left" "$(loops_backed_by "$STATE")" 0
expect_eq "no CoW left" "$(find "$STATE/sandboxes" -mindepth 1 | wc -l)" 0
expect_true "the agent is still alive" kill -0 "$AGENT_PID"
expect_true "SIGTERM exits 0" stop_agent
finish
