#!/usr/bin/env bash
# A sandbox whose origin is a TCMU block device: Debian's tcmu-runner with its qcow handler is
# the backstore (overlaybd's is not packaged). First, before tcmu-runner starts: `tcmu attach`
# and a TCMU-origin create fail within 15 s (503 backstore_unavailable), saying to start it, and
# leave configfs empty. Then the allowlist: without --tcmu-config-dir
# the API refuses TCMU origins (403); with it, hostile configs (a resultFile outside the
# config's folder, through a symlink, with "..", commas and newlines, symlinked or loose
# configs, a handler not allowed) are refused or logged only inside the config's folder, and
# nothing outside it changes. Then an allowed config: create, write, fork (running and paused
# sources), pause, resume (data intact), flatten, destroy; the TCMU device is shared by two
# sandboxes, detached with the last one. A device of ours left by a destroy cut short is
# detached at the next start, while a device in use and one the operator attached stay.
# Configfs is empty at the end.
here=$(dirname "$0")
source "$here/lib.sh"

require "no wrenn- devices before the test" test -z "$(wrenn_devices)"
hba=/sys/kernel/config/target/core/user_999999999
require "no TCMU devices before the test" test -z "$(ls "$hba" 2>/dev/null | grep '^dev_')"

# The allowed folder: root-owned configs, not writable by others.
OBD=$WORK/obd
mkdir -p "$OBD/qcow" "$WORK/outside"
chmod 755 "$OBD" "$OBD/qcow"
TCMU_FLAGS=(--tcmu-config-dir "$OBD" --tcmu-handler qcow --tcmu-handler overlaybd)

# A 32 MiB qcow2 image with known bytes.
head -c 32M /dev/urandom >"$WORK/origin.raw"
qemu-img convert -q -f raw -O qcow2 "$WORK/origin.raw" "$OBD/qcow/origin.qcow2"
chmod 644 "$OBD/qcow/origin.qcow2"

origin="{\"type\": \"tcmu\", \"config\": \"$OBD/qcow/origin.qcow2\", \"handler\": \"qcow\", \"size_bytes\": 33554432}"
no_tcmu_left() {  # what: no core device and no loopback target in configfs
    expect_eq "$1: no TCMU device in configfs" "$(ls "$hba" 2>/dev/null | grep -c '^dev_')" 0
    expect_eq "$1: no loopback target in configfs" \
        "$(ls /sys/kernel/config/target/loopback 2>/dev/null | grep -c '^naa\.')" 0
}
millis() { echo $(($(date +%s%N) / 1000000)); }

step "no backstore running: tcmu attach and a TCMU-origin create fail fast"
require "no tcmu-runner runs yet" test -z "$(pgrep -x tcmu-runner)"
t0=$(millis)
"$AGENT" tcmu attach --id 4242 --config "$OBD/qcow/origin.qcow2" --handler qcow --size 33554432 \
    >"$WORK/attach.out" 2>"$WORK/attach.err"
rc=$?
took=$(($(millis) - t0))
echo "wrenn-agent tcmu attach without a backstore: exit $rc after $took ms"
expect_eq "tcmu attach without a backstore exits 1" "$rc" 1
expect_true "and within 15 s ($took ms)" test "$took" -lt 15000
expect_true "it names the handler and the backstore to start" \
    grep -q "no qcow handler serves TCMU devices here; start tcmu-runner" "$WORK/attach.err"
expect_true "it does not retry" grep -q "(try 1 of 5)" "$WORK/attach.err"
expect_eq "nothing on stdout" "$(cat "$WORK/attach.out")" ""
no_tcmu_left "after tcmu attach without a backstore"
require "agent starts with --tcmu-config-dir" start_agent --tcmu-config-dir "$OBD" --tcmu-handler qcow
t0=$(millis)
api POST /sandboxes "{\"id\": \"nb\", \"origin\": $origin}"
took=$(($(millis) - t0))
echo "POST /sandboxes with a TCMU origin and no backstore: $STATUS after $took ms"
expect_eq "a TCMU-origin create without a backstore" "$STATUS" 503
expect_eq "its error code" "$(json error.code)" backstore_unavailable
expect_true "within 15 s ($took ms)" test "$took" -lt 15000
expect_true "the message says to start tcmu-runner" grep -q "start tcmu-runner, the backstore of the qcow handler" <<<"$BODY"
no_tcmu_left "after a create without a backstore"
api GET /sandboxes
expect_eq "the list answers" "$STATUS" 200
expect_eq "no sandbox was made" "$(ids)" ""
expect_true "SIGTERM exits 0" stop_agent

mkdir -p "$WORK/runner"
tcmu-runner -l "$WORK/runner" >/dev/null 2>&1 &
runner=$!
for _ in $(seq 1 600); do
    grep -q "Handler qcow is registered" "$WORK/runner/tcmu-runner.log" 2>/dev/null && break
    sleep 0.1
done
require "tcmu-runner registered its qcow handler" grep -q "Handler qcow is registered" "$WORK/runner/tcmu-runner.log"
sleep 1

step "no --tcmu-config-dir: TCMU origins are refused"
require "agent starts without TCMU flags" start_agent
api POST /sandboxes "{\"id\": \"t0\", \"origin\": $origin}"
expect_eq "a TCMU origin without --tcmu-config-dir" "$STATUS" 403
expect_eq "its error code" "$(json error.code)" tcmu_not_allowed
expect_true "the message names the flag" grep -q -- "--tcmu-config-dir" <<<"$BODY"
expect_eq "nothing attached" "$(ls "$hba" 2>/dev/null | grep -c '^dev_')" 0
expect_true "SIGTERM exits 0" stop_agent

step "hostile TCMU configs"
# The id the agent derives for an origin (tcmu/naming.cpp, id_for_origin), to make one taken.
tcmu_id_sized() {  # handler config [size]
    python3 - "$1" "$2" "${3:-}" <<'PY'
import hashlib, sys
h, c, s = (a.encode() for a in sys.argv[1:4])
spec = b"wrenn tcmu origin v1\n" + b"".join(
    n + b"=" + str(len(v)).encode() + b":" + v + b"\n"
    for n, v in ((b"handler", h), (b"config", c), (b"size", s)))
v = int.from_bytes(hashlib.sha256(spec).digest()[:8], "big") % 10**12
print(v or 1)
PY
}
tcmu_id() { tcmu_id_sized "$1" "$2"; }  # handler config
profile=/etc/profile.d/wrenn-test-$PREFIX.sh
printf 'sentinel\n' >"$WORK/outside/sentinel.log"
touch -d '2001-01-01 00:00:00' "$WORK/outside/sentinel.log"
mkdir -p "$OBD/abs" "$OBD/dotdot" "$OBD/link" "$OBD/viadir"
printf '{"lowers": [], "resultFile": "%s"}' "$profile" >"$OBD/abs/config.v1.json"
printf '{"lowers": [], "resultFile": "../../outside/dotdot.log"}' >"$OBD/dotdot/config.v1.json"
printf '{"lowers": [], "resultFile": "result.log"}' >"$OBD/link/config.v1.json"
ln -s "$WORK/outside/sentinel.log" "$OBD/link/result.log"
printf '{"lowers": [], "resultFile": "out/sentinel.log"}' >"$OBD/viadir/config.v1.json"
ln -s "$WORK/outside" "$OBD/viadir/out"
chmod 644 "$OBD"/*/config.v1.json
touch "$WORK/before"
sleep 1
require "agent starts with --tcmu-config-dir" start_agent "${TCMU_FLAGS[@]}"
# Each attach finds its id taken by another device (made here in configfs, with another
# dev_config) and fails at once, after which the agent writes its attach log: the point is
# where that log may go.
for name in abs dotdot link viadir; do
    config=$OBD/$name/config.v1.json
    id=$(tcmu_id overlaybd "$config")
    mkdir -p "$hba/dev_$id"
    printf 'dev_config=file//someone/else' >"$hba/dev_$id/control"
    api POST /sandboxes "{\"id\": \"h-$name\", \"origin\": {\"type\": \"tcmu\", \"config\": \"$config\"}}"
    expect_eq "hostile resultFile ($name): the attach fails" "$STATUS" 500
    expect_true "hostile resultFile ($name): the id in use is explained" grep -q "in use" <<<"$BODY"
    rmdir "$hba/dev_$id"
done
step "nothing outside the config folders changed"
expect_true "the absolute resultFile was not created" test ! -e "$profile"
expect_true "nothing at ../../outside" test ! -e "$WORK/outside/dotdot.log"
expect_eq "the sentinel outside is unchanged" "$(cat "$WORK/outside/sentinel.log")" sentinel
expect_eq "and so is its mtime" "$(stat -c %Y "$WORK/outside/sentinel.log")" "$(date -d '2001-01-01 00:00:00' +%s)"
expect_true "the absolute case logged beside its config" grep -q "wrenn tcmu attach" "$OBD/abs/init-debug.log"
expect_true "the .. case logged beside its config" grep -q "wrenn tcmu attach" "$OBD/dotdot/init-debug.log"
expect_eq "the log is 0600" "$(stat -c %a "$OBD/abs/init-debug.log")" 600
# The agent's own socket and the test's client.py pipes live in $WORK (lib.sh), which changes
# the folder's mtime too.
expect_eq "no other file outside the config folder changed" \
    "$(find "$WORK" /etc -xdev -newer "$WORK/before" 2>/dev/null \
        | grep -v -e "^$OBD/" -e "^$WORK/agent.log$" -e "^$WORK/runner" -e "^$STATE" \
            -e "^$SOCK$" -e "^$WORK/client\.in$" -e "^$WORK/client\.out$" -e "^$WORK$" | sort -u)" ""

step "refusals: paths, symlinks, owners, modes, handlers, values"
# Refused before anything is attached: the status, and no device.
refused() {  # what status body
    api POST /sandboxes "$3"
    expect_eq "$1" "$STATUS" "$2"
}
mkdir -p "$OBD/loose" "$OBD/foreign"
printf '{}' >"$OBD/loose/config.v1.json"
chmod 666 "$OBD/loose/config.v1.json"
printf '{}' >"$OBD/foreign/config.v1.json"
chown 65534 "$OBD/foreign/config.v1.json"
ln -s "$OBD/qcow/origin.qcow2" "$OBD/qcow-link.qcow2"
ln -s "$OBD/qcow" "$OBD/dirlink"
refused "a config outside the allowed folder" 403 \
    "{\"origin\": {\"type\": \"tcmu\", \"config\": \"$WORK/origin.raw\", \"handler\": \"qcow\"}}"
refused "a config path with .." 400 \
    "{\"origin\": {\"type\": \"tcmu\", \"config\": \"$OBD/../origin.raw\", \"handler\": \"qcow\"}}"
refused "a symlinked config" 403 \
    "{\"origin\": {\"type\": \"tcmu\", \"config\": \"$OBD/qcow-link.qcow2\", \"handler\": \"qcow\", \"size_bytes\": 33554432}}"
refused "a config through a symlinked folder" 403 \
    "{\"origin\": {\"type\": \"tcmu\", \"config\": \"$OBD/dirlink/origin.qcow2\", \"handler\": \"qcow\", \"size_bytes\": 33554432}}"
refused "a config others may write" 403 \
    "{\"origin\": {\"type\": \"tcmu\", \"config\": \"$OBD/loose/config.v1.json\"}}"
refused "a config not owned by root" 403 \
    "{\"origin\": {\"type\": \"tcmu\", \"config\": \"$OBD/foreign/config.v1.json\"}}"
mkdir -p "$OBD/loosedir" "$OBD/foreigndir"
printf '{}' >"$OBD/loosedir/config.v1.json"
printf '{}' >"$OBD/foreigndir/config.v1.json"
chmod 644 "$OBD/loosedir/config.v1.json" "$OBD/foreigndir/config.v1.json"
chmod 775 "$OBD/loosedir"
chown 65534 "$OBD/foreigndir"
refused "a config in a folder the group may write" 403 \
    "{\"origin\": {\"type\": \"tcmu\", \"config\": \"$OBD/loosedir/config.v1.json\"}}"
expect_true "the error names the folder and the fix" grep -q "chmod go-w $OBD/loosedir" <<<"$BODY"
refused "a config in a folder not owned by root" 403 \
    "{\"origin\": {\"type\": \"tcmu\", \"config\": \"$OBD/foreigndir/config.v1.json\"}}"
expect_true "the error names the folder's owner" grep -q "folder $OBD/foreigndir is owned by uid 65534" <<<"$BODY"
refused "a handler not allowed" 403 \
    "{\"origin\": {\"type\": \"tcmu\", \"config\": \"$OBD/qcow/origin.qcow2\", \"handler\": \"file\"}}"
expect_true "the error names the allowed handlers" grep -q "qcow, overlaybd" <<<"$BODY"
refused "a comma in the config" 400 \
    "{\"origin\": {\"type\": \"tcmu\", \"config\": \"$OBD/qcow/a,dev_size=1\", \"handler\": \"qcow\"}}"
expect_true "the error names the field" grep -q "origin.config" <<<"$BODY"
refused "a newline in the config" 400 \
    "{\"origin\": {\"type\": \"tcmu\", \"config\": \"$OBD/qcow/a\\nb\", \"handler\": \"qcow\"}}"
long=$OBD/$(head -c 300 /dev/zero | tr '\0' a)
refused "a config over the kernel's 255 bytes" 400 \
    "{\"origin\": {\"type\": \"tcmu\", \"config\": \"$long\", \"handler\": \"qcow\"}}"
expect_eq "no TCMU device after the refusals" "$(ls "$hba" 2>/dev/null | grep -c '^dev_')" 0
api GET /sandboxes
expect_eq "the list answers after the refusals" "$STATUS" 200
expect_eq "no sandbox after the refusals" "$(ids)" ""
expect_true "SIGTERM exits 0" stop_agent

step "an allowed config"
require "agent starts" start_agent "${TCMU_FLAGS[@]}"
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

step "fork over a TCMU origin"
api POST /sandboxes/t1/fork '{"id": "tf"}'
expect_eq "fork a running TCMU-origin sandbox" "$STATUS" 201
expect_eq "the fork's origin type" "$(json origin.type)" tcmu
expect_eq "it shares the disk" "$(json origin.device)" "$disk"
expect_eq "its lineage" "$(json forked_from)" t1
expect_eq "still one TCMU device" "$(ls "$hba" | grep -c '^dev_')" 1
expect_eq "the fork reads t1's write" "$(read_marker /dev/mapper/wrenn-tf 3 15)" "tcmu-sandbox-t1"
expect_eq "and the qcow image's bytes elsewhere" \
    "$(dd if=/dev/mapper/wrenn-tf bs=1M skip=11 count=1 iflag=direct status=none | sha256sum)" \
    "$(dd if="$WORK/origin.raw" bs=1M skip=11 count=1 status=none | sha256sum)"
write_marker /dev/mapper/wrenn-tf 3 "tcmu-fork-tf-xx"
expect_eq "the fork's write is not in t1" "$(read_marker /dev/mapper/wrenn-t1 3 15)" "tcmu-sandbox-t1"
api DELETE /sandboxes/tf
expect_eq "destroy the fork" "$STATUS" 204
expect_eq "the origin stays for t1 and t2" "$(ls "$hba" | grep -c '^dev_')" 1

api POST /sandboxes/t1/pause
expect_eq "pause t1" "$STATUS" 200
expect_eq "the origin stays for t2" "$(ls "$hba" | grep -c '^dev_')" 1
api POST /sandboxes/t2/pause
expect_eq "pause t2" "$STATUS" 200
expect_eq "the last pause detaches the TCMU device" "$(ls "$hba" 2>/dev/null | grep -c '^dev_')" 0
api POST /sandboxes/t1/fork '{"id": "tp"}'
expect_eq "fork a paused TCMU-origin sandbox (attaches the origin)" "$STATUS" 201
expect_eq "one TCMU device for the fork" "$(ls "$hba" | grep -c '^dev_')" 1
expect_eq "the paused source's write is in the fork" "$(read_marker /dev/mapper/wrenn-tp 3 15)" "tcmu-sandbox-t1"
api DELETE /sandboxes/tp
expect_eq "destroy the paused source's fork" "$STATUS" 204
expect_eq "its destroy detaches the TCMU device" "$(ls "$hba" 2>/dev/null | grep -c '^dev_')" 0
api POST /sandboxes/t1/resume
expect_eq "resume t1 (attaches the origin again)" "$STATUS" 200
expect_eq "t1 data after resume" "$(read_marker /dev/mapper/wrenn-t1 3 15)" "tcmu-sandbox-t1"

# Restart: the TCMU origin is adopted, not attached twice.
kill_agent
require "agent restarts" start_agent "${TCMU_FLAGS[@]}"
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

step "startup detaches a TCMU device of ours that no sandbox uses; one in use stays"
# Three origins: one for a sandbox whose destroy is cut short after its device went (the
# origin is never released), one for a live sandbox, one the operator attached by hand.
for n in 2 3; do
    cp "$OBD/qcow/origin.qcow2" "$OBD/qcow/origin$n.qcow2"
done
origin2="{\"type\": \"tcmu\", \"config\": \"$OBD/qcow/origin2.qcow2\", \"handler\": \"qcow\", \"size_bytes\": 33554432}"
api POST /sandboxes "{\"id\": \"o1\", \"origin\": $origin}"
expect_eq "create o1" "$STATUS" 201
api POST /sandboxes "{\"id\": \"o2\", \"origin\": $origin2}"
expect_eq "create o2" "$STATUS" 201
write_marker /dev/mapper/wrenn-o2 5 "tcmu-sandbox-o2"
expect_eq "two TCMU devices" "$(ls "$hba" | grep -c '^dev_')" 2
for d in "$hba"/dev_*; do
    expect_true "$(basename "$d") carries our serial" grep -q "WRENN-TCMU-[0-9a-f]\{16\}-${d##*/dev_}\$" "$d/wwn/vpd_unit_serial"
done
kill_agent
# The destroy of o1, killed between removing its device and releasing its origin.
require "remove o1's device as its destroy did" dmsetup remove wrenn-o1
require "the operator attaches a device by hand" "$AGENT" tcmu attach --config "$OBD/qcow/origin3.qcow2" --handler qcow --size 33554432
expect_eq "three TCMU devices before the restart" "$(ls "$hba" | grep -c '^dev_')" 3
o1_id=$(tcmu_id_sized qcow "$OBD/qcow/origin.qcow2" 33554432)
o2_id=$(tcmu_id_sized qcow "$OBD/qcow/origin2.qcow2" 33554432)
cli_id=$(tcmu_id_sized qcow "$OBD/qcow/origin3.qcow2" 33554432)
require "the agent restarts" start_agent "${TCMU_FLAGS[@]}"
expect_true "o1's device is detached" test ! -e "$hba/dev_$o1_id"
expect_true "the log says so" grep -q "detached device $o1_id ($OBD/qcow/origin.qcow2): ours, and no sandbox uses it" "$AGENT_LOG"
expect_true "o2's device, in use, stays" test -e "$hba/dev_$o2_id"
expect_true "the operator's device stays" test -e "$hba/dev_$cli_id"
api GET /sandboxes/o2
expect_eq "o2 adopted" "$(json state)" running
expect_eq "o2 reads its write" "$(read_marker /dev/mapper/wrenn-o2 5 15)" "tcmu-sandbox-o2"
api GET /sandboxes/o1
expect_eq "o1 paused (its device was gone)" "$(json state)" paused
for id in o1 o2; do
    api DELETE "/sandboxes/$id"
    expect_eq "destroy $id" "$STATUS" 204
done
require "the operator detaches theirs" "$AGENT" tcmu detach --id "$cli_id"
no_tcmu_left "after the orphan step"

step "a device attached by an agent from before SHA-256 ids is found and reused"
# Agents before SHA-256 ids named a config's device by FNV-1a 64 of its path, mod 10^12.
legacy=$(python3 - "$OBD/qcow/origin.qcow2" <<'PY'
import sys
h = 14695981039346656037
for c in sys.argv[1].encode():
    h = ((h ^ c) * 1099511628211) % 2**64
print(h % 10**12 or 1)
PY
)
expect_true "SIGTERM exits 0" stop_agent
require "attach under the old id with the operator's CLI" "$AGENT" tcmu attach --id "$legacy" \
    --config "$OBD/qcow/origin.qcow2" --handler qcow --size 33554432
require "agent starts" start_agent "${TCMU_FLAGS[@]}"
api POST /sandboxes "{\"id\": \"t3\", \"origin\": $origin}"
expect_eq "create over the origin the old agent attached" "$STATUS" 201
expect_eq "the old device is reused, no second one" "$(ls "$hba" | grep '^dev_')" "dev_$legacy"
expect_eq "t3 reads the qcow image" \
    "$(dd if=/dev/mapper/wrenn-t3 bs=1M skip=7 count=1 iflag=direct status=none | sha256sum)" \
    "$(dd if="$WORK/origin.raw" bs=1M skip=7 count=1 status=none | sha256sum)"
api DELETE /sandboxes/t3
expect_eq "destroy t3" "$STATUS" 204
expect_eq "the old device went with its last sandbox" "$(ls "$hba" 2>/dev/null | grep -c '^dev_')" 0
expect_eq "configfs has no loopback target at the end" \
    "$(ls /sys/kernel/config/target/loopback 2>/dev/null | grep -c '^naa\.')" 0
expect_true "SIGTERM exits 0" stop_agent
kill -TERM "$runner"
wait "$runner" 2>/dev/null
finish
