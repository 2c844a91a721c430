#!/usr/bin/env bash
# Moving a sandbox between hosts (issue 14): agent A, state dir on XFS, exports a paused sandbox
# and destroys it; agent B, a fresh state dir on ext4 with a copy of the template under another
# name, imports it and the device reads the same bytes as before the export. A running
# sandbox's export, while a writer runs, holds every record acknowledged before it began.
# Then the refusals, each leaving no record, folder, device or loop: a template nobody has
# (409 template_mismatch naming the digest), a flipped byte and a truncated stream (400
# invalid_archive), an upload cut off mid-body, one over --max-import-bytes (413), a JSON body
# (415), an id in use (409).
source "$(dirname "$0")/lib.sh"

ARCHIVE_TYPE='Content-Type: application/vnd.wrenn.sandbox'
HEADERS=$WORK/headers

# export_to ID FILE [QUERY]: sets STATUS; the response's header goes to $HEADERS.
export_to() {
    STATUS=$("${CURL[@]}" -s -D "$HEADERS" -o "$2" -w '%{http_code}' --max-time 300 \
        "$URL/sandboxes/$1/export${3:-}")
}
# import_from ID FILE [-]: sets STATUS and BODY. -T streams the file (curl's --data-binary would
# read it whole first) with its length; with a third argument "-" the file is piped into
# curl's stdin instead, which it sends with chunked transfer encoding, as from `aws s3 cp - `.
import_from() {
    local out
    out=$(mktemp)
    if [ "${3:-}" == - ]; then
        STATUS=$("${CURL[@]}" -s -o "$out" -w '%{http_code}' --max-time 300 -X POST -H "$ARCHIVE_TYPE" \
            -T - "$URL/sandboxes/import?id=$1" <"$2")
    else
        STATUS=$("${CURL[@]}" -s -o "$out" -w '%{http_code}' --max-time 300 -X POST -H "$ARCHIVE_TYPE" \
            -T "$2" "$URL/sandboxes/import?id=$1")
    fi
    BODY=$(cat "$out")
    rm -f "$out"
}
device_sha() { sha256sum <"/dev/mapper/wrenn-$1" | cut -d' ' -f1; }
# nothing_left WHAT ID: the agent knows no such sandbox, and it has no folder, device or loop.
nothing_left() {
    api GET "/sandboxes/$2"
    expect_eq "$1: no sandbox $2" "$STATUS" 404
    expect_true "$1: no folder for $2" test ! -e "$STATE/sandboxes/$2"
    expect_eq "$1: no device for $2" "$(wrenn_devices | grep -cx "wrenn-$2")" 0
    expect_eq "$1: no CoW loop for $2" "$(loops_backed_by "$STATE/sandboxes/$2")" 0
}

STATE_A=$WORK/a
STATE_B=$EXT4_WORK/b
TEMPLATES_A=$WORK/a-templates
TEMPLATES_B=$EXT4_WORK/b-templates
mkdir -p "$TEMPLATES_A" "$TEMPLATES_B"
STATE=$STATE_A
TEMPLATES=$TEMPLATES_A
make_template base 32
digest=$(blocks_digest "$TEMPLATES_A/base.img")

step "agent A (xfs): a sandbox with 1 MiB of random data and three markers, paused and exported"
require "agent A starts" start_agent
api POST /sandboxes '{"id": "s1", "template": "base"}'
require "create s1" [ "$STATUS" == 201 ]
head -c 1M /dev/urandom | dd of=/dev/mapper/wrenn-s1 bs=1M seek=3 oflag=direct conv=fsync status=none
for at in 0 17 31; do write_marker /dev/mapper/wrenn-s1 "$at" "marker at $at MiB"; done
before=$(device_sha s1)
api POST /sandboxes/s1/pause
require "pause s1" [ "$STATUS" == 200 ]
export_to s1 "$WORK/s1.wrenn"
expect_eq "export answers 200" "$STATUS" 200
expect_true "the export is application/vnd.wrenn.sandbox" \
    grep -qix 'content-type: application/vnd.wrenn.sandbox.' "$HEADERS"
expect_true "the export is sent chunked" grep -qix 'transfer-encoding: chunked.' "$HEADERS"
export_to s1 "$WORK/s1.raw.wrenn" "?compress=false"
expect_eq "uncompressed export answers 200" "$STATUS" 200
# Changed: 256 chunks of 4 KiB for the random MiB and one per marker.
changed=$(((256 + 3) * 4096))
raw_size=$(stat -c %s "$WORK/s1.raw.wrenn")
expect_true "the uncompressed export ($raw_size bytes) is the changed data ($changed) and at most 5% more" \
    test "$raw_size" -ge "$changed" -a "$raw_size" -le $((changed * 105 / 100))
api GET /sandboxes/s1
expect_eq "the export left s1 paused" "$(json state)" paused
api DELETE /sandboxes/s1
expect_eq "destroy s1 on A" "$STATUS" 204
require "agent A stops" stop_agent

step "agent B (ext4, the template under another name): import and resume read the same bytes"
cp "$TEMPLATES_A/base.img" "$TEMPLATES_B/golden.img"
STATE=$STATE_B
TEMPLATES=$TEMPLATES_B
require "agent B starts" start_agent
import_from s1 "$WORK/s1.wrenn"
expect_eq "import answers 201" "$STATUS" 201
expect_eq "the import is paused" "$(json state)" paused
expect_eq "the import is over the template with the archive's digest" "$(json template)" golden
imported_allocated=$(json cow.allocated_bytes)
expect_true "the import shows the chunks it holds as allocated (got '$imported_allocated')" \
    test "${imported_allocated:-0}" -gt 8192
api POST /sandboxes/s1/resume
expect_eq "resume the import" "$STATUS" 200
api GET /sandboxes/s1
expect_eq "the import's allocated_bytes is what the kernel reports once it runs" \
    "$(json cow.allocated_bytes)" "$imported_allocated"
expect_eq "the imported device reads the same bytes as before the export" "$(device_sha s1)" "$before"
import_from s1raw "$WORK/s1.raw.wrenn" -
expect_eq "import of the uncompressed export, sent chunked from a pipe, answers 201" "$STATUS" 201
api POST /sandboxes/s1raw/resume
expect_eq "the uncompressed import reads the same bytes" "$(device_sha s1raw)" "$before"
import_from s1 "$WORK/s1.wrenn"
expect_eq "an import over an id in use: 409" "$STATUS" 409
expect_eq "... already_exists" "$(json error.code)" already_exists
expect_eq "... and s1 still reads its bytes" "$(device_sha s1)" "$before"

step "a running sandbox's export while a writer runs"
rm -f "$WORK/stop"
writer /dev/mapper/wrenn-s1 2048 &
wpid=$!
while [ "$(last_ack)" -lt 2068 ]; do sleep 0.1; done
acked=$(last_ack)
export_to s1 "$WORK/run.wrenn"
expect_eq "export of the running s1 answers 200" "$STATUS" 200
after=$(last_ack)
while [ "$(last_ack)" -lt $((after + 10)) ]; do sleep 0.1; done
touch "$WORK/stop"
wait "$wpid"
expect_eq "the writer saw no error" $? 0
api GET /sandboxes/s1
expect_eq "s1 still runs after its export" "$(json state)" running
import_from run1 "$WORK/run.wrenn"
expect_eq "import of the running export answers 201" "$STATUS" 201
api POST /sandboxes/run1/resume
expect_eq "resume run1" "$STATUS" 200
expect_eq "every record acknowledged before the export began is in it" \
    "$(records_in /dev/mapper/wrenn-run1 2048 "$acked")" $((acked - 2047))
expect_eq "the rest of run1 is s1's (the marker at 31 MiB)" \
    "$(read_marker /dev/mapper/wrenn-run1 31 16)" "marker at 31 MiB"
for id in s1 s1raw run1; do
    api DELETE "/sandboxes/$id"
    expect_eq "destroy $id" "$STATUS" 204
done

step "broken streams are refused and leave nothing"
python3 - "$WORK/s1.raw.wrenn" "$WORK/flipped.wrenn" <<'EOF'
import sys
data = bytearray(open(sys.argv[1], "rb").read())
data[len(data) // 2] ^= 0x40  # inside a chunk's bytes: only the digests can tell
open(sys.argv[2], "wb").write(data)
EOF
import_from flipped "$WORK/flipped.wrenn"
expect_eq "a flipped byte: 400" "$STATUS" 400
expect_eq "... invalid_archive" "$(json error.code)" invalid_archive
nothing_left "a flipped byte" flipped
head -c $((raw_size / 2)) "$WORK/s1.raw.wrenn" >"$WORK/half.wrenn"
import_from half "$WORK/half.wrenn"
expect_eq "a truncated stream: 400" "$STATUS" 400
expect_eq "... invalid_archive" "$(json error.code)" invalid_archive
nothing_left "a truncated stream" half
out=$(mktemp)
STATUS=$("${CURL[@]}" -s -o "$out" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    --data-binary "@$WORK/s1.raw.wrenn" "$URL/sandboxes/import?id=json")
expect_eq "an archive sent as JSON: 415" "$STATUS" 415
rm -f "$out"
nothing_left "an archive sent as JSON" json

# An upload cut off: the whole length announced, half of it sent, then the connection closed.
python3 - "$SOCK" "$WORK/s1.raw.wrenn" <<'EOF'
import socket, sys, time
data = open(sys.argv[2], "rb").read()
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"POST /sandboxes/import?id=cut HTTP/1.1\r\nHost: localhost\r\n"
          b"Content-Type: application/vnd.wrenn.sandbox\r\n"
          + f"Content-Length: {len(data)}\r\n\r\n".encode() + data[: len(data) // 2])
time.sleep(1)
s.close()
EOF
gone=0
for _ in $(seq 1 100); do
    [ ! -e "$STATE/sandboxes/cut" ] && gone=1 && break
    sleep 0.1
done
expect_eq "an upload cut off mid-body: its folder goes" "$gone" 1
nothing_left "an upload cut off mid-body" cut
expect_true "the agent still answers" "${CURL[@]}" -sf -o /dev/null "$URL/healthz"
require "agent B stops" stop_agent

step "over --max-import-bytes: 413"
require "agent B starts with --max-import-bytes 65536" start_agent --max-import-bytes 65536
import_from big "$WORK/s1.raw.wrenn"
expect_eq "an import over the limit: 413" "$STATUS" 413
nothing_left "an import over the limit" big
require "agent B stops" stop_agent

step "agent C (xfs): no template with the archive's digest"
STATE=$WORK/c
TEMPLATES=$WORK/c-templates
mkdir -p "$TEMPLATES"
make_template other 32
require "agent C starts" start_agent
import_from s1 "$WORK/s1.wrenn"
expect_eq "an archive of a template nobody has: 409" "$STATUS" 409
expect_eq "... template_mismatch" "$(json error.code)" template_mismatch
expect_true "... naming the digest it needs" grep -q "$digest" <<<"$BODY"
nothing_left "a template mismatch" s1
require "agent C stops" stop_agent

expect_eq "no wrenn- device left" "$(wrenn_devices | wc -l)" 0
expect_eq "no loop left" "$(($(loops_backed_by "$WORK") + $(loops_backed_by "$EXT4_WORK")))" 0
finish
