#!/usr/bin/env bash
# Fork: a new sandbox from a running one. On XFS (reflink) and on ext4 (copy of the data
# ranges): every record a writer had acknowledged before the fork is in the child, later
# records of the parent are not, and the child's writes stay its own. Then the shapes of use
# (fork of a paused sandbox, of a fork, 16 forks of one source, the source destroyed while its
# children run), an ext4 filesystem mounted in the sandbox that checks clean in both, and
# kill -9 during a loop of forks: nothing leaks and no device stays suspended.
source "$(dirname "$0")/lib.sh"

suspended_devices() {
    local n=0 d
    for d in $(wrenn_devices); do
        dmsetup info "$d" | grep -q '^State: *SUSPENDED' && n=$((n + 1))
    done
    echo $n
}
fork_under_writes() {  # the core check, on the filesystem the state dir is on now
    local fs=$1
    step "$fs: fork a running sandbox under a writer"
    api POST /sandboxes '{"id": "src", "template": "base"}'
    require "$fs: create src" [ "$STATUS" == 201 ]
    rm -f "$WORK/stop"
    writer /dev/mapper/wrenn-src 100 &
    local wpid=$!
    while [ "$(last_ack)" -lt 120 ]; do sleep 0.1; done
    local before
    before=$(last_ack)
    api POST /sandboxes/src/fork '{"id": "kid"}'
    expect_eq "$fs: fork answers 201" "$STATUS" 201
    expect_eq "$fs: the child says whose fork it is" "$(json forked_from)" src
    expect_eq "$fs: the child runs" "$(json state)" running
    local after
    after=$(last_ack)
    # Let the parent write on, well past the fork.
    while [ "$(last_ack)" -lt $((after + 20)) ]; do sleep 0.1; done
    touch "$WORK/stop"
    wait "$wpid"
    expect_eq "$fs: the writer never failed" "$?" 0
    expect_eq "$fs: every record acknowledged before the fork ($before) is in the child" \
        "$(records_in /dev/mapper/wrenn-kid 100 "$before")" $((before - 99))
    expect_eq "$fs: no record written after the fork is in the child" \
        "$(records_in /dev/mapper/wrenn-kid $((after + 1)) $((after + 20)))" 0
    expect_eq "$fs: the parent has them" "$(record_at /dev/mapper/wrenn-src $((after + 20)))" "record $((after + 20))"
    write_marker /dev/mapper/wrenn-kid 20 "child-only"
    expect_true "$fs: the child's writes are its own" [ "$(read_marker /dev/mapper/wrenn-src 20 10)" != "child-only" ]
    expect_eq "$fs: and read back in the child" "$(read_marker /dev/mapper/wrenn-kid 20 10)" "child-only"
    expect_eq "$fs: no device is left suspended" "$(suspended_devices)" 0
    expect_true "$fs: the agent logged the stall" grep -q "op=fork source I/O stalled" "$AGENT_LOG"
    echo "$fs: $(grep -o 'source I/O stalled [0-9.]* ms ([a-z_/]*)' "$AGENT_LOG" | tail -n 1)"
    for sb in kid src; do
        api DELETE /sandboxes/$sb
        expect_eq "$fs: destroy $sb" "$STATUS" 204
    done
}

make_template base 32
require "agent starts (state on XFS)" start_agent
fork_under_writes xfs
expect_true "xfs: the copy was a reflink" grep -q "op=fork source I/O stalled .* (reflink)" "$AGENT_LOG"
require "agent stops" stop_agent

mkdir -p "$EXT4_WORK"
STATE_XFS=$STATE
STATE=$EXT4_WORK/state
require "agent starts (state on ext4)" start_agent
fork_under_writes ext4
expect_true "ext4: the copy used copy_file_range" grep -q "op=fork source I/O stalled .* (copy_file_range)" "$AGENT_LOG"
require "agent stops" stop_agent
rm -rf "$EXT4_WORK"
STATE=$STATE_XFS

step "fork of a paused sandbox, of a fork, 16 of one source, source destroyed under children"
require "agent starts" start_agent
api POST /sandboxes '{"id": "p", "template": "base"}'
write_marker /dev/mapper/wrenn-p 2 "paused-parent"
api POST /sandboxes/p/pause
expect_eq "pause p" "$STATUS" 200
api POST /sandboxes/p/fork '{"id": "pk"}'
expect_eq "fork of a paused sandbox" "$STATUS" 201
expect_true "p stays paused, with no device" test ! -e /dev/mapper/wrenn-p
expect_eq "pk has p's data" "$(read_marker /dev/mapper/wrenn-pk 2 13)" "paused-parent"
api POST /sandboxes/pk/fork '{"id": "pkk"}'
expect_eq "fork of a fork" "$STATUS" 201
expect_eq "pkk has it too" "$(read_marker /dev/mapper/wrenn-pkk 2 13)" "paused-parent"
api POST /sandboxes/p/fork '{"id": "pk"}'
expect_eq "fork into a taken id" "$STATUS" 409
expect_eq "is already_exists" "$(json error.code)" already_exists
api POST /sandboxes/nope/fork '{}'
expect_eq "fork of an unknown sandbox" "$STATUS" 404

api POST /sandboxes '{"id": "many", "template": "base"}'
write_marker /dev/mapper/wrenn-many 1 "many-source"
for i in $(seq 1 16); do
    api POST /sandboxes/many/fork "{\"id\": \"m$i\"}"
    [ "$STATUS" == 201 ] || fail "fork m$i: $STATUS $BODY"
done
ok=0
for i in $(seq 1 16); do
    [ "$(read_marker /dev/mapper/wrenn-m$i 1 11)" == "many-source" ] && ok=$((ok + 1))
done
expect_eq "16 forks of one source have its data" "$ok" 16
api DELETE /sandboxes/many
expect_eq "the source is destroyed while its children run" "$STATUS" 204
write_marker /dev/mapper/wrenn-m7 3 "still-here"
expect_eq "a child reads and writes after its source is gone" "$(read_marker /dev/mapper/wrenn-m7 1 11)$(read_marker /dev/mapper/wrenn-m7 3 10)" "many-sourcestill-here"

step "an ext4 filesystem mounted in the sandbox forks crash-consistent and checks clean"
mkfs.ext4 -q -F "$TEMPLATES/fs.img" 64M
api POST /sandboxes '{"id": "fs", "template": "fs"}'
expect_eq "create fs" "$STATUS" 201
mkdir -p "$WORK/mnt" "$WORK/mnt2"
require "mount the sandbox's filesystem" mount /dev/mapper/wrenn-fs "$WORK/mnt"
head -c 5000000 /dev/urandom >"$WORK/mnt/before"
sync -f "$WORK/mnt/before"
sum_before=$(sha256sum <"$WORK/mnt/before")
api POST /sandboxes/fs/fork '{"id": "fsk"}'
expect_eq "fork with the filesystem mounted" "$STATUS" 201
head -c 1000000 /dev/urandom >"$WORK/mnt/after"
umount "$WORK/mnt"
expect_true "the parent's filesystem checks clean" e2fsck -fn /dev/mapper/wrenn-fs
require "mount the child's (replays its journal)" mount /dev/mapper/wrenn-fsk "$WORK/mnt2"
expect_eq "the child has the file synced before the fork" "$(sha256sum <"$WORK/mnt2/before")" "$sum_before"
expect_true "and not the one written after" test ! -e "$WORK/mnt2/after"
umount "$WORK/mnt2"
expect_true "the child's filesystem checks clean" e2fsck -fn /dev/mapper/wrenn-fsk

step "kill -9 during a loop of forks: nothing leaks, nothing stays suspended"
api POST /sandboxes '{"id": "k", "template": "base"}'
(for i in $(seq 1 200); do
    "${CURL[@]}" -s -o /dev/null -X POST -H 'Content-Type: application/json' -d "{\"id\": \"kf$i\"}" \
        "$URL/sandboxes/k/fork"
done) &
loop_pid=$!
sleep 3
kill_agent
kill "$loop_pid" 2>/dev/null
wait "$loop_pid" 2>/dev/null
require "agent restarts" start_agent
expect_eq "no device is left suspended" "$(suspended_devices)" 0
api GET /sandboxes
listed=$(ids | paste -sd ' ' -)
devices=$(wrenn_devices | sed 's/^wrenn-//' | sort | tr '\n' ' ' | sed 's/ $//')
expect_eq "every device is a listed running sandbox" "$devices" "$(ids running | paste -sd ' ' -)"
folders=$(ls "$STATE/sandboxes" | sort | tr '\n' ' ' | sed 's/ $//')
expect_eq "every sandbox folder is a listed sandbox" "$folders" "$listed"
expect_eq "no copy is left half-made" "$(find "$STATE/sandboxes" -name '*.tmp-*' | wc -l)" 0
for sb in $listed; do
    api DELETE /sandboxes/$sb
    [ "$STATUS" == 204 ] || fail "destroy $sb: $STATUS $BODY"
done
expect_eq "no wrenn- device left" "$(wrenn_devices | wc -l)" 0
expect_eq "no loop left over our files" "$(loops_backed_by "$WORK")" 0
require "agent stops cleanly" stop_agent
finish
