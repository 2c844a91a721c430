#!/usr/bin/env bash
# The agent end to end, in a real kernel: 8 sandboxes on one template share one loop; writes
# survive pause/resume; a held-open device makes pause fail and the sandbox stays running;
# kill -9 and restart adopts running sandboxes and removes stale devices; --cleanup-stale at
# boot; destroy leaves nothing behind.
here=$(dirname "$0")
source "$here/lib.sh"

require "no wrenn- devices before the test (the agent would remove them as stale)" \
    test -z "$(wrenn_devices)"
make_template base 64
require "agent starts" start_agent

api GET /healthz
expect_eq "healthz status" "$STATUS" 200
expect_eq "healthz device-mapper usable" "$(json device_mapper.usable)" True

# --- create 8 on one template: one shared read-only loop -------------------------------------
for i in $(seq 1 8); do
    api POST /sandboxes "{\"id\": \"sb$i\", \"template\": \"base\"}"
    expect_eq "create sb$i" "$STATUS" 201
    expect_eq "sb$i state" "$(json state)" running
    expect_eq "sb$i device" "$(json device)" "/dev/mapper/wrenn-sb$i"
done
expect_eq "one loop for the template" "$(loops_backed_by "$TEMPLATES/base.img")" 1
api GET /templates
expect_eq "template users" "$(json templates.0.sandboxes)" 8
for i in $(seq 1 8); do
    expect_true "sb$i device node exists" test -b "/dev/mapper/wrenn-sb$i"
done

# --- write to each, through the snapshot -------------------------------------------------------
for i in $(seq 1 8); do
    write_marker "/dev/mapper/wrenn-sb$i" 3 "written-by-sb$i"
done
expect_eq "sb1 reads its own write" "$(read_marker /dev/mapper/wrenn-sb1 3 14)" "written-by-sb1"
expect_eq "sb2 does not see sb1's write" "$(read_marker /dev/mapper/wrenn-sb2 3 14)" "written-by-sb2"
expect_true "the template file is untouched" \
    test "$(dd if="$TEMPLATES/base.img" bs=1M skip=3 count=1 status=none | head -c 14)" != "written-by-sb1"
expect_eq "unwritten blocks read as the template" \
    "$(dd if=/dev/mapper/wrenn-sb5 bs=1M skip=10 count=1 iflag=direct status=none | sha256sum)" \
    "$(dd if="$TEMPLATES/base.img" bs=1M skip=10 count=1 status=none | sha256sum)"
api GET /sandboxes/sb1
expect_true "live CoW usage is reported" test "$(json cow.allocated_bytes)" -gt 0

# --- pause half, resume, data intact -------------------------------------------------------------
for i in 1 2 3 4; do
    api POST "/sandboxes/sb$i/pause"
    expect_eq "pause sb$i" "$STATUS" 200
    expect_eq "sb$i paused" "$(json state)" paused
    expect_true "sb$i device gone after pause" test ! -e "/dev/mapper/wrenn-sb$i"
done
expect_eq "wrenn- devices while half are paused" "$(wrenn_devices | wc -l)" 4
expect_eq "CoW loops went with their devices" "$(loops_backed_by "$STATE/sandboxes")" 4
api POST /sandboxes/sb1/pause
expect_eq "pause of a paused sandbox" "$STATUS" 409
expect_eq "its code" "$(json error.code)" invalid_state
for i in 1 2 3 4; do
    api POST "/sandboxes/sb$i/resume"
    expect_eq "resume sb$i" "$STATUS" 200
    expect_eq "sb$i data after resume" "$(read_marker "/dev/mapper/wrenn-sb$i" 3 14)" "written-by-sb$i"
done
expect_eq "still one template loop" "$(loops_backed_by "$TEMPLATES/base.img")" 1

# --- a pause while another process holds the device open fails; the sandbox stays running --------
exec 7<"/dev/mapper/wrenn-sb5"
api POST /sandboxes/sb5/pause
expect_eq "pause of a held-open device" "$STATUS" 409
expect_eq "its code" "$(json error.code)" device_busy
expect_true "the message names the device and the open count" \
    grep -q "wrenn-sb5.*open count" <<<"$(json error.message)"
api GET /sandboxes/sb5
expect_eq "sb5 still running" "$(json state)" running
expect_true "sb5 keeps last_error" test -n "$(json last_error)"
expect_true "sb5 device still there" test -b /dev/mapper/wrenn-sb5
expect_eq "sb5 data intact after the failed pause" "$(read_marker /dev/mapper/wrenn-sb5 3 14)" "written-by-sb5"
exec 7<&-
api POST /sandboxes/sb5/pause
expect_eq "pause once released" "$STATUS" 200
api POST /sandboxes/sb5/resume
expect_eq "resume sb5" "$STATUS" 200

# --- kill -9 and restart: running adopted, stale devices removed --------------------------------
api POST /sandboxes/sb8/pause
expect_eq "pause sb8 before the crash" "$STATUS" 200
kill_agent
# A stale snapshot no record owns, and a stale device in a paused sandbox's name.
head -c 8M /dev/zero >"$WORK/stray-origin.img"
truncate -s 16M "$WORK/stray.cow"
so=$(losetup --find --show "$WORK/stray-origin.img")
sc=$(losetup --find --show "$WORK/stray.cow")
dmsetup create wrenn-stray --table "0 16384 snapshot $so $sc P 8"
dmsetup create wrenn-sb8 --table "0 16384 snapshot $so $sc P 8" 2>/dev/null ||
    dmsetup create wrenn-sb8 --table "0 16384 zero"
require "agent restarts after kill -9" start_agent
for i in 1 2 3 4 5 6 7; do
    api GET "/sandboxes/sb$i"
    expect_eq "sb$i adopted as running" "$(json state)" running
done
expect_true "stray snapshot removed at start" test -z "$(dmsetup ls | awk '$1 == "wrenn-stray"')"
api GET /sandboxes/sb8
expect_eq "sb8 still paused" "$(json state)" paused
expect_eq "sb1 data after the crash" "$(read_marker /dev/mapper/wrenn-sb1 3 14)" "written-by-sb1"
# the stale wrenn-sb8 (a zero target if the snapshot table was refused) must not block resume
api POST /sandboxes/sb8/resume
expect_eq "resume over a stale device of the same name" "$STATUS" 200
expect_eq "sb8 data after resume" "$(read_marker /dev/mapper/wrenn-sb8 3 14)" "written-by-sb8"
losetup -d "$so" "$sc" 2>/dev/null
api POST /sandboxes/sb2/pause
expect_eq "an adopted sandbox pauses" "$STATUS" 200
api POST /sandboxes/sb2/resume
expect_eq "and resumes" "$STATUS" 200
expect_eq "one template loop after adoption" "$(loops_backed_by "$TEMPLATES/base.img")" 1

# --- SIGTERM exits 0 ---------------------------------------------------------------------------
expect_true "SIGTERM stops the agent with status 0" stop_agent

# --- boot: --cleanup-stale ---------------------------------------------------------------------
"$AGENT" --cleanup-stale --state-dir "$STATE" >>"$AGENT_LOG" 2>&1
expect_eq "cleanup-stale exit status" "$?" 0
expect_eq "no wrenn- devices after cleanup-stale" "$(wrenn_devices | wc -l)" 0
expect_eq "no loops over our files after cleanup-stale" "$(loops_backed_by "$STATE")" 0
require "agent starts after cleanup" start_agent
api GET /sandboxes
expect_eq "every sandbox paused after cleanup" \
    "$(python3 -c 'import json,sys; print(sorted({s["state"] for s in json.loads(sys.argv[1])["sandboxes"]}))' "$BODY")" \
    "['paused']"
api POST /sandboxes/sb3/resume
expect_eq "resume after boot cleanup" "$STATUS" 200
expect_eq "sb3 data after boot cleanup" "$(read_marker /dev/mapper/wrenn-sb3 3 14)" "written-by-sb3"

# --- flatten a paused sandbox into a new template; a sandbox made from it reads the same -----
api POST /sandboxes/sb3/pause
expect_eq "pause sb3 for flatten" "$STATUS" 200
api POST /sandboxes/sb3/flatten '{"template": "gold"}'
expect_eq "flatten sb3 into gold" "$STATUS" 201
expect_eq "its path" "$(json path)" "$TEMPLATES/gold.img"
api POST /sandboxes/sb3/flatten '{"template": "gold"}'
expect_eq "flatten into a taken name" "$STATUS" 409
expect_eq "its code" "$(json error.code)" template_exists
api POST /sandboxes '{"id": "fromgold", "template": "gold"}'
expect_eq "create from the new template at once" "$STATUS" 201
api POST /sandboxes/fromgold/flatten '{"template": "gold2"}'
expect_eq "flatten of a running sandbox" "$(json error.code)" invalid_state
expect_eq "it reads sb3's write" "$(read_marker /dev/mapper/wrenn-fromgold 3 14)" "written-by-sb3"
expect_eq "and the base template's bytes elsewhere" \
    "$(dd if=/dev/mapper/wrenn-fromgold bs=1M skip=20 count=1 iflag=direct status=none | sha256sum)" \
    "$(dd if="$TEMPLATES/base.img" bs=1M skip=20 count=1 status=none | sha256sum)"
api DELETE /sandboxes/fromgold
expect_eq "destroy fromgold" "$STATUS" 204

# --- destroy all: nothing left ------------------------------------------------------------------
for i in $(seq 1 8); do
    api DELETE "/sandboxes/sb$i"
    expect_eq "destroy sb$i" "$STATUS" 204
done
api GET /sandboxes/sb1
expect_eq "destroyed sandbox is gone" "$STATUS" 404
expect_eq "no wrenn- device left" "$(wrenn_devices | wc -l)" 0
expect_eq "no loop left over the template" "$(loops_backed_by "$TEMPLATES/base.img")" 0
expect_eq "no loop left over the state dir" "$(loops_backed_by "$STATE/sandboxes")" 0
expect_eq "no CoW left" "$(find "$STATE/sandboxes" -name '*.cow' | wc -l)" 0
expect_eq "no sandbox folder left" "$(find "$STATE/sandboxes" -mindepth 1 | wc -l)" 0
expect_true "SIGTERM at the end exits 0" stop_agent
finish
