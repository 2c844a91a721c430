#!/usr/bin/env bash
# A sandbox whose origin is a TCMU block device: Debian's tcmu-runner with its qcow handler is
# the backstore (overlaybd's is not packaged). Create, write, pause, resume (data intact),
# flatten, destroy; the TCMU device is shared by two sandboxes, detached with the last one,
# and configfs is empty at the end.
here=$(dirname "$0")
source "$here/lib.sh"

require "no wrenn- devices before the test" test -z "$(wrenn_devices)"
hba=/sys/kernel/config/target/core/user_999999999
require "no TCMU devices before the test" test -z "$(ls "$hba" 2>/dev/null | grep '^dev_')"

# A 32 MiB qcow2 image with known bytes.
head -c 32M /dev/urandom >"$WORK/origin.raw"
qemu-img convert -q -f raw -O qcow2 "$WORK/origin.raw" "$WORK/origin.qcow2"
mkdir -p "$WORK/runner"
tcmu-runner -l "$WORK/runner" >/dev/null 2>&1 &
runner=$!
for _ in $(seq 1 600); do
    grep -q "Handler qcow is registered" "$WORK/runner/tcmu-runner.log" 2>/dev/null && break
    sleep 0.1
done
require "tcmu-runner registered its qcow handler" grep -q "Handler qcow is registered" "$WORK/runner/tcmu-runner.log"
sleep 1

require "agent starts" start_agent
origin="{\"type\": \"tcmu\", \"config\": \"$WORK/origin.qcow2\", \"handler\": \"qcow\", \"size_bytes\": 33554432}"
api POST /sandboxes "{\"id\": \"t1\", \"origin\": $origin}"
expect_eq "create over a TCMU origin" "$STATUS" 201
expect_eq "origin type" "$(json origin.type)" tcmu
disk=$(json origin.device)
expect_true "the origin is a SCSI disk ($disk)" test -b "$disk"
expect_eq "unwritten blocks read as the qcow image" \
    "$(dd if=/dev/mapper/wrenn-t1 bs=1M skip=7 count=1 iflag=direct status=none | sha256sum)" \
    "$(dd if="$WORK/origin.raw" bs=1M skip=7 count=1 status=none | sha256sum)"
api POST /sandboxes "{\"id\": \"t2\", \"origin\": $origin}"
expect_eq "a second sandbox on the same origin" "$STATUS" 201
expect_eq "it shares the disk" "$(json origin.device)" "$disk"
expect_eq "one TCMU device for two sandboxes" "$(ls "$hba" | grep -c '^dev_')" 1

write_marker /dev/mapper/wrenn-t1 3 "tcmu-sandbox-t1"
api POST /sandboxes/t1/pause
expect_eq "pause t1" "$STATUS" 200
expect_eq "the origin stays for t2" "$(ls "$hba" | grep -c '^dev_')" 1
api POST /sandboxes/t2/pause
expect_eq "pause t2" "$STATUS" 200
expect_eq "the last pause detaches the TCMU device" "$(ls "$hba" 2>/dev/null | grep -c '^dev_')" 0
api POST /sandboxes/t1/resume
expect_eq "resume t1 (attaches the origin again)" "$STATUS" 200
expect_eq "t1 data after resume" "$(read_marker /dev/mapper/wrenn-t1 3 15)" "tcmu-sandbox-t1"

# Restart: the TCMU origin is adopted, not attached twice.
kill_agent
require "agent restarts" start_agent
api GET /sandboxes/t1
expect_eq "t1 adopted" "$(json state)" running
expect_eq "still one TCMU device" "$(ls "$hba" | grep -c '^dev_')" 1

api POST /sandboxes/t1/pause
expect_eq "pause t1 again" "$STATUS" 200
api POST /sandboxes/t1/flatten '{"template": "fromtcmu"}'
expect_eq "flatten a TCMU-origin sandbox" "$STATUS" 201
expect_eq "the flattened image has the sandbox's write" \
    "$(dd if="$TEMPLATES/fromtcmu.img" bs=1M skip=3 count=1 status=none | head -c 15)" "tcmu-sandbox-t1"
expect_eq "and the origin's bytes elsewhere" \
    "$(dd if="$TEMPLATES/fromtcmu.img" bs=1M skip=9 count=1 status=none | sha256sum)" \
    "$(dd if="$WORK/origin.raw" bs=1M skip=9 count=1 status=none | sha256sum)"
expect_eq "flatten let go of the origin" "$(ls "$hba" 2>/dev/null | grep -c '^dev_')" 0

for id in t1 t2; do
    api DELETE "/sandboxes/$id"
    expect_eq "destroy $id" "$STATUS" 204
done
expect_eq "configfs has no TCMU device" "$(ls "$hba" 2>/dev/null | grep -c '^dev_')" 0
expect_eq "configfs has no loopback target" \
    "$(ls /sys/kernel/config/target/loopback 2>/dev/null | grep -c '^naa\.')" 0
expect_true "SIGTERM exits 0" stop_agent
kill -TERM "$runner"
wait "$runner" 2>/dev/null
finish
