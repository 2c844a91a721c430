#!/usr/bin/env bash
# Device faults: a sandbox whose CoW lives on a filesystem that fills up, with space watching
# off. The kernel
# invalidates its snapshot; the API says so truthfully (cow.status "invalid", resume refused
# with snapshot_invalid); nothing else is harmed (another sandbox's data, the template, the
# agent itself).
here=$(dirname "$0")
source "$here/lib.sh"

require "no wrenn- devices before the test" test -z "$(wrenn_devices)"
make_template base 64
template_sum=$(sha256sum <"$TEMPLATES/base.img")
# The state dir on a 40 MiB ext4 with no reserved blocks: a 64 MiB rewrite cannot fit.
truncate -s 40M "$WORK/small.img"
mkfs.ext4 -q -F -m 0 "$WORK/small.img"
mkdir -p "$WORK/small"
mount -o loop "$WORK/small.img" "$WORK/small"
STATE=$WORK/small/state
# Space watching off (--min-free 0): this is the fault it exists to prevent (agent_space.sh),
# here to check that the API tells the truth when it happens anyway.
require "agent starts with its state on the small filesystem" start_agent --min-free 0

api POST /sandboxes '{"id": "bystander", "template": "base"}'
expect_eq "create bystander" "$STATUS" 201
write_marker /dev/mapper/wrenn-bystander 5 "bystander-data"
api POST /sandboxes/bystander/pause
expect_eq "pause bystander" "$STATUS" 200

api POST /sandboxes '{"id": "victim", "template": "base"}'
expect_eq "create victim" "$STATUS" 201
dd if=/dev/urandom of=/dev/mapper/wrenn-victim bs=1M count=64 oflag=direct status=none 2>/dev/null
expect_true "writing 64 MiB through a CoW on a 40 MiB filesystem fails" test $? -ne 0
api GET /sandboxes/victim
expect_eq "GET answers" "$STATUS" 200
expect_eq "the victim is still running" "$(json state)" running
expect_eq "the kernel's verdict is reported" "$(json cow.status)" invalid

api GET /healthz
expect_eq "the agent is healthy" "$STATUS" 200
api GET /sandboxes/bystander
expect_eq "the bystander is untouched" "$(json state)" paused

api POST /sandboxes/victim/pause
# The record may not fit on a full filesystem (500, said so); the device must go either way.
expect_true "pause answers 200 or 500 ($STATUS)" test "$STATUS" == 200 -o "$STATUS" == 500
expect_true "the victim's device is gone" test ! -e /dev/mapper/wrenn-victim
api GET /sandboxes/victim
expect_eq "the victim is paused" "$(json state)" paused
api POST /sandboxes/victim/resume
expect_eq "resume of an invalidated CoW is refused" "$STATUS" 409
expect_eq "with snapshot_invalid" "$(json error.code)" snapshot_invalid
api POST /sandboxes/victim/flatten '{"template": "fromvictim"}'
expect_eq "flatten of an invalidated CoW is refused" "$STATUS" 409
expect_true "and leaves no template" test ! -e "$TEMPLATES/fromvictim.img"
api DELETE /sandboxes/victim
expect_eq "destroy the victim" "$STATUS" 204

api POST /sandboxes/bystander/resume
expect_eq "the bystander resumes" "$STATUS" 200
expect_eq "with its data" "$(read_marker /dev/mapper/wrenn-bystander 5 14)" "bystander-data"
expect_eq "the template is unchanged" "$(sha256sum <"$TEMPLATES/base.img")" "$template_sum"
api DELETE /sandboxes/bystander
expect_eq "destroy the bystander" "$STATUS" 204
expect_eq "no wrenn- device left" "$(wrenn_devices | wc -l)" 0

# A restart that cannot list device-mapper's devices (here: without CAP_SYS_ADMIN, which every
# dm ioctl needs) must not take "no list" for "no devices" and mark a live sandbox paused.
api POST /sandboxes '{"id": "live", "template": "base"}'
expect_eq "create live" "$STATUS" 201
write_marker /dev/mapper/wrenn-live 3 "live-data"
kill_agent
record_before=$(sha256sum <"$STATE/sandboxes/live/sandbox.json")
timeout 60 setpriv --bounding-set -sys_admin --inh-caps -sys_admin \
    "$AGENT" serve "${LISTEN[@]}" --state-dir "$STATE" --templates-dir "$TEMPLATES" --min-free 0 \
    >"$WORK/nodm.log" 2>&1
expect_eq "without device-mapper access the agent exits 1" "$?" 1
expect_true "and says why ($(tail -n 1 "$WORK/nodm.log"))" \
    grep -q "device-mapper is in the kernel but cannot be used.*no record was changed" "$WORK/nodm.log"
expect_eq "the record is unchanged" "$(sha256sum <"$STATE/sandboxes/live/sandbox.json")" "$record_before"
expect_true "the device is still there" test -b /dev/mapper/wrenn-live
require "with access again the agent starts" start_agent --min-free 0
api GET /sandboxes/live
expect_eq "live is adopted as running" "$(json state)" running
expect_eq "with its data" "$(read_marker /dev/mapper/wrenn-live 3 9)" "live-data"
api DELETE /sandboxes/live
expect_eq "destroy live" "$STATUS" 204
expect_true "SIGTERM exits 0" stop_agent
finish
