#!/usr/bin/env bash
# Templates through the API (docs/api.md: GET, PUT and DELETE /templates/{name}, GET
# /templates/{name}/image), between two agents in one kernel, as between two hosts: agent A
# (state dir on XFS) flattens a sandbox into template "flat" and streams it through a pipe into
# agent B (state dir on ext4); B's copy has the same bytes and digest, is root's, 0444, and
# allocates no more than its data (all-zero blocks stay holes); the same upload again is a 200
# that writes nothing. A sandbox over "flat" exported on A imports and reads back on B. Raw and
# zstd uploads (with and without a Content-Type) publish too, and a create that names a digest
# instead of a name gets the template with that digest. Each refusal leaves nothing in the
# templates folder (no image, no temporary file): a wrong digest (400 digest_mismatch), a size
# not a multiple of 512 and a truncated stream (400 invalid_image), uploads cut off mid-body,
# a name taken by another digest (409 template_exists); and, on agent C whose templates are on a
# small filesystem of their own, an image over --max-template-bytes (413) and one larger than
# the free space (507). DELETE of a template a paused sandbox uses is a 409 template_in_use
# naming it; once the sandbox is gone, a 204 removes the image and any loop of it.
source "$(dirname "$0")/lib.sh"

MIB=$((1024 * 1024))
TEMPLATE_TYPE='Content-Type: application/vnd.wrenn.template'
ARCHIVE_TYPE='Content-Type: application/vnd.wrenn.sandbox'

# Agent A is lib.sh's (start_agent, $SOCK, $AGENT_LOG); B and C are started here the same way,
# each with its own state dir, templates dir, unix socket and log.
STATE_A=$WORK/a
TEMPLATES_A=$STATE_A/templates
STATE_B=$EXT4_WORK/b
TEMPLATES_B=$STATE_B/templates
STATE_C=$WORK/c
TEMPLATES_C=$WORK/c-templates  # a small ext4 of its own, mounted here
declare -A SOCKS=([a]=$SOCK [b]=$WORK/b.sock [c]=$WORK/c.sock)
declare -A LOGS=([a]=$AGENT_LOG [b]=$WORK/agent-b.log [c]=$WORK/agent-c.log)
declare -A PIDS=()

# B's and C's processes are ours to kill when the test ends early (finish calls kill_agent), and
# their logs are printed with A's when a check failed.
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
eval "lib_finish() $(declare -f finish | tail -n +2)"
finish() {
    local name
    if [ "$FAILED" -ne 0 ]; then
        for name in b c; do
            [ -f "${LOGS[$name]}" ] || continue
            echo "--- agent $name's log (last 40 lines) ---" >&2
            tail -n 40 "${LOGS[$name]}" >&2
        done
    fi
    lib_finish
}

# start_other b|c STATE TEMPLATES [FLAG...]: serve as start_agent does, on the agent's socket.
start_other() {
    local name=$1 state=$2 templates=$3
    shift 3
    "$AGENT" serve --listen "unix:${SOCKS[$name]}" --state-dir "$state" --templates-dir "$templates" \
        --log-level debug "$@" >>"${LOGS[$name]}" 2>&1 &
    PIDS[$name]=$!
    await_agent "${SOCKS[$name]}" "${PIDS[$name]}" "${LOGS[$name]}"
}
stop_other() {  # b|c: SIGTERM, and it must exit 0
    local name=$1 rc
    kill -TERM "${PIDS[$name]}"
    wait "${PIDS[$name]}"
    rc=$?
    unset "PIDS[$name]"
    return $rc
}
# on a|b|c COMMAND...: runs COMMAND (api, known_digest, put_template...) against that agent.
on() {
    local CURL=(curl --unix-socket "${SOCKS[$1]}")
    shift
    "$@"
}

# put_template NAME QUERY SRC [CURL_ARG...]: PUT SRC (a file, or - for stdin, sent chunked) to
# /templates/NAME QUERY with curl -T; sets STATUS and BODY.
put_template() {
    local name=$1 query=$2 src=$3
    shift 3
    STATUS=$("${CURL[@]}" -s -o "$WORK/put.out" -w '%{http_code}' --max-time 300 "$@" -T "$src" \
        "$URL/templates/$name$query")
    BODY=$(cat "$WORK/put.out")
}
# move FROM TO SRC DST DIGEST [IMAGE_QUERY [CURL_ARG...]]: the pipe of docs/api.md,
# `curl FROM/templates/SRC/image | curl -T - TO/templates/DST?digest=DIGEST`; sets STATUS and
# BODY (TO's answer) and SRC_RC (the downloading curl's exit status).
move() {
    local from=$1 to=$2 src=$3 dst=$4 digest=$5 query=${6:-}
    shift 5
    [ $# -gt 0 ] && shift
    STATUS=$({
        curl -fsS --unix-socket "${SOCKS[$from]}" --max-time 300 "$URL/templates/$src/image$query" 2>"$WORK/move.err"
        echo $? >"$WORK/move.rc"
    } | curl -s --unix-socket "${SOCKS[$to]}" -o "$WORK/put.out" -w '%{http_code}' --max-time 300 "$@" \
        -T - "$URL/templates/$dst?digest=$digest")
    SRC_RC=$(cat "$WORK/move.rc")
    BODY=$(cat "$WORK/put.out")
}
# cut_upload AGENT NAME DIGEST FILE length|chunked: a PUT whose body is the first half of FILE,
# announced whole with a Content-Length (and the template stream's type), or sent chunked
# without its last chunk (and no type); then the connection is closed, no answer awaited.
cut_upload() {
    python3 - "${SOCKS[$1]}" "/templates/$2?digest=$3" "$4" "$5" <<'EOF'
import socket, sys, time
sock, path, src, mode = sys.argv[1:]
data = open(src, "rb").read()
half = data[: len(data) // 2]
s = socket.socket(socket.AF_UNIX)
s.connect(sock)
head = f"PUT {path} HTTP/1.1\r\nHost: localhost\r\n"
if mode == "length":
    s.sendall((head + "Content-Type: application/vnd.wrenn.template\r\n"
               + f"Content-Length: {len(data)}\r\n\r\n").encode() + half)
else:
    s.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
    for at in range(0, len(half), 65536):
        piece = half[at:at + 65536]
        s.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
time.sleep(1)
s.close()
EOF
}

file_sha() { sha256sum <"$1" | cut -d' ' -f1; }
device_sha() { sha256sum <"/dev/mapper/wrenn-$1" | cut -d' ' -f1; }
range_sha() {  # DEV FIRST_MIB COUNT_MIB
    dd if="$1" bs=1M skip="$2" count="$3" iflag=direct status=none | sha256sum | cut -d' ' -f1
}
marker_reads() {  # WHAT DEV OFFSET_MIB TEXT
    expect_eq "$1 at $3 MiB" "$(read_marker "$2" "$3" ${#4})" "$4"
}
allocated() { echo $(($(stat -c '%b * %B' "$1"))); }
# data_bytes FILE: the bytes in FILE's 4 KiB blocks that are not all zeros (holes are skipped).
data_bytes() {
    python3 - "$1" <<'EOF'
import os, sys
BLOCK, zero = 4096, bytes(4096)
n = 0
fd = os.open(sys.argv[1], os.O_RDONLY)
size, at = os.fstat(fd).st_size, 0
while at < size:
    try:
        at = os.lseek(fd, at, os.SEEK_DATA)
    except OSError:  # ENXIO: no data after at
        break
    end = os.lseek(fd, at, os.SEEK_HOLE)
    at -= at % BLOCK
    while at < end:
        piece = os.pread(fd, min(1 << 20, end - at), at)
        for i in range(0, len(piece), BLOCK):
            block = piece[i:i + BLOCK]
            n += len(block) if block != zero[:len(block)] else 0
        at += len(piece)
print(n)
EOF
}
# sparse_image FILE SIZE_MIB FIRST_MIB COUNT_MIB...: SIZE_MIB of holes with random data in each
# FIRST_MIB COUNT_MIB range.
sparse_image() {
    local file=$1 size=$2
    shift 2
    truncate -s $((size * MIB)) "$file"
    while [ $# -gt 0 ]; do
        dd if=/dev/urandom of="$file" bs=1M seek="$1" count="$2" conv=notrunc status=none
        shift 2
    done
}
listing() { ls -A "$1" | paste -sd ' ' -; }
# nothing_left WHAT AGENT DIR BEFORE [NAME]: DIR's listing comes back to BEFORE (a refused
# upload's temporary file goes, within 40 s: a cut-off upload is seen when its connection
# closes), and the agent knows no template NAME.
nothing_left() {
    local what=$1 agent=$2 dir=$3 before=$4 name=${5:-} now
    for _ in $(seq 200); do
        now=$(listing "$dir")
        [ "$now" == "$before" ] && break
        sleep 0.2
    done
    expect_eq "$what: nothing left in the templates folder (no image, no temporary file)" "$now" "$before"
    if [ -n "$name" ]; then
        on "$agent" api GET "/templates/$name"
        expect_eq "$what: no template $name" "$STATUS/$(json error.code)" 404/template_not_found
    fi
}
# published WHAT AGENT DIR NAME SOURCE_FILE DIGEST: the 201 just answered published NAME: the
# answer's fields, the file (root's, 0444, SOURCE_FILE's bytes and digest, allocating at most
# 1.05 times its data), no temporary file, and GET /templates/NAME.
published() {
    local what=$1 agent=$2 dir=$3 name=$4 src=$5 digest=$6 img=$3/$4.img size data alloc
    size=$(stat -c %s "$src")
    expect_eq "$what: 201" "$STATUS" 201
    expect_eq "$what: the answer names the template" "$(json template)" "$name"
    expect_eq "$what: the answer's path" "$(json path)" "$img"
    expect_eq "$what: the answer's size_bytes" "$(json size_bytes)" "$size"
    expect_eq "$what: the answer's digest" "$(json digest)" "$digest"
    expect_true "$what: the answer has allocated_bytes" [ -n "$(json allocated_bytes)" ]
    expect_eq "$what: $name.img is a regular file, root's, mode 0444" \
        "$(stat -c '%F %U %a' "$img")" "regular file root 444"
    expect_eq "$what: $name.img holds the same bytes" "$(file_sha "$img")" "$(file_sha "$src")"
    expect_eq "$what: $name.img's digest, computed here" "$(blocks_digest "$img")" "$digest"
    data=$(data_bytes "$img")
    alloc=$(allocated "$img")
    expect_true "$what: $name.img allocates $alloc bytes for $data bytes of data (at most 1.05x)" \
        [ $((alloc * 100)) -le $((data * 105)) ]
    expect_eq "$what: no temporary file" "$(find "$dir" -maxdepth 1 -name '*.tmp-*' | wc -l)" 0
    on "$agent" api GET "/templates/$name"
    expect_eq "$what: GET /templates/$name" "$STATUS" 200
    expect_eq "$what: GET shows size_bytes" "$(json size_bytes)" "$size"
    expect_eq "$what: GET shows the digest at once (no background read)" "$(json digest)" "$digest"
}

require "no wrenn- devices before the test" test -z "$(wrenn_devices)"
require "zstd is there (the guest shares the host's root: scripts/install-deps installs it)" \
    command -v zstd
mkdir -p "$TEMPLATES_A" "$TEMPLATES_B" "$TEMPLATES_C"

step "agent A (xfs): a sparse 64 MiB template, a sandbox written and flattened into \"flat\""
# base: random data in 0-8 and 32-40 MiB, holes elsewhere.
sparse_image "$TEMPLATES_A/base.img" 64 0 8 32 8
STATE=$STATE_A
TEMPLATES=$TEMPLATES_A
require "agent A starts" start_agent
require "agent B starts" start_other b "$STATE_B" "$TEMPLATES_B"
api POST /sandboxes '{"id": "src", "template": "base"}'
require "create src on A" [ "$STATUS" == 201 ]
head -c $((4 * MIB)) /dev/urandom >"$WORK/src-data"
dev=/dev/mapper/wrenn-src
dd if="$WORK/src-data" of=$dev bs=1M seek=16 oflag=direct conv=fsync status=none
# All-zero blocks written over data and over holes: B keeps them as holes.
dd if=/dev/zero of=$dev bs=1M seek=4 count=1 oflag=direct conv=fsync status=none
dd if=/dev/zero of=$dev bs=1M seek=48 count=2 oflag=direct conv=fsync status=none
for at in 1 24 56 63; do write_marker $dev "$at" "src marker at $at MiB"; done
api POST /sandboxes/src/pause
require "pause src" [ "$STATUS" == 200 ]
api POST /sandboxes/src/flatten '{"template": "flat"}'
require "flatten src into flat" [ "$STATUS" == 201 ]
api DELETE /sandboxes/src
expect_eq "destroy src" "$STATUS" 204
D=$(known_digest /templates/flat digest)
api GET /templates/flat
expect_eq "GET /templates/flat on A: 200" "$STATUS" 200
expect_eq "A's digest of flat is its blocks-sha256-4k, computed here" "$D" "$(blocks_digest "$TEMPLATES_A/flat.img")"
require "flat's digest is known ('$D')" test -n "$D" -a "$D" != pending
flat_size=$(stat -c %s "$TEMPLATES_A/flat.img")
flat_data=$(data_bytes "$TEMPLATES_A/flat.img")
echo "flat: $flat_size bytes, $flat_data of data; $(allocated "$TEMPLATES_A/flat.img") allocated on A"

step "A -> B through a pipe: 201, the same bytes and digest, root's, 0444, holes kept"
move a b flat flat "$D"
expect_eq "A's download (curl -fsS) exits 0" "$SRC_RC" 0
published "A -> B" b "$TEMPLATES_B" flat "$TEMPLATES_A/flat.img" "$D"
stamp=$(stat -c '%i %y %z' "$TEMPLATES_B/flat.img")
move a b flat flat "$D"
expect_eq "the same upload again: 200" "$STATUS" 200
expect_eq "... with the template's fields" "$(json template) $(json digest)" "flat $D"
expect_eq "... and nothing written (inode, mtime, ctime)" "$(stat -c '%i %y %z' "$TEMPLATES_B/flat.img")" "$stamp"
expect_eq "... and no temporary file" "$(find "$TEMPLATES_B" -maxdepth 1 -name '*.tmp-*' | wc -l)" 0

step "the image stream from a file: compress=false, sent with its type, then deleted"
STATUS=$("${CURL[@]}" -s -D "$WORK/headers" -o "$WORK/flat.stream" -w '%{http_code}' --max-time 300 \
    "$URL/templates/flat/image?compress=false")
expect_eq "GET /templates/flat/image?compress=false" "$STATUS" 200
expect_true "the image stream is application/vnd.wrenn.template" \
    grep -qix 'content-type: application/vnd.wrenn.template.' "$WORK/headers"
stream_size=$(stat -c %s "$WORK/flat.stream")
# The stream carries the file's data ranges (SEEK_DATA): at least its data, and no more than
# what the file allocates (XFS may allocate some all-zero blocks; B keeps those as holes).
flat_allocated=$(allocated "$TEMPLATES_A/flat.img")
expect_true "the uncompressed stream ($stream_size bytes) carries the data ($flat_data), not the holes ($flat_allocated allocated)" \
    test "$stream_size" -ge "$flat_data" -a $((stream_size * 100)) -le $((flat_allocated * 101 + 100 * MIB))
on b put_template flat2 "?digest=$D" "$WORK/flat.stream" -H "$TEMPLATE_TYPE"
published "the stream from a file, as $TEMPLATE_TYPE" b "$TEMPLATES_B" flat2 "$TEMPLATES_A/flat.img" "$D"
on b api DELETE /templates/flat2
expect_eq "DELETE /templates/flat2 (no sandbox uses it): 204" "$STATUS" 204
expect_true "flat2.img is gone" test ! -e "$TEMPLATES_B/flat2.img"
on b api GET /templates/flat2
expect_eq "GET /templates/flat2 after its delete" "$STATUS/$(json error.code)" 404/template_not_found

step "raw and zstd uploads, and a create that names a digest"
sparse_image "$WORK/raw1.img" 16 2 4
sparse_image "$WORK/zst1.img" 16 0 1 9 3
sparse_image "$WORK/zst2.img" 16 5 2 15 1
declare -A digest_of=()
for t in raw1 zst1 zst2; do digest_of[$t]=$(blocks_digest "$WORK/$t.img"); done
on b put_template raw1 "?digest=${digest_of[raw1]}" "$WORK/raw1.img"
published "a raw image, curl -T FILE without a Content-Type" b "$TEMPLATES_B" raw1 "$WORK/raw1.img" "${digest_of[raw1]}"
on b put_template raw2 "?digest=${digest_of[raw1]}" "$WORK/raw1.img" -H 'Content-Type: application/octet-stream'
published "a raw image as application/octet-stream" b "$TEMPLATES_B" raw2 "$WORK/raw1.img" "${digest_of[raw1]}"
on b api DELETE /templates/raw2
expect_eq "DELETE /templates/raw2: 204" "$STATUS" 204
# From a pipe (curl sends it chunked); a redirection, not `zstd | put_template`, so that
# put_template runs in this shell and its STATUS and BODY stay.
on b put_template zst1 "?digest=${digest_of[zst1]}" - -H 'Content-Type: application/zstd' \
    < <(zstd -q -c "$WORK/zst1.img")
published "zstd from a pipe (chunked), as application/zstd" b "$TEMPLATES_B" zst1 "$WORK/zst1.img" "${digest_of[zst1]}"
zstd -q -c "$WORK/zst2.img" >"$WORK/zst2.img.zst"
on b put_template zst2 "?digest=${digest_of[zst2]}" "$WORK/zst2.img.zst"
published "a zstd file without a Content-Type" b "$TEMPLATES_B" zst2 "$WORK/zst2.img" "${digest_of[zst2]}"

on b api POST /sandboxes "{\"id\": \"bydigest\", \"template\": \"${digest_of[raw1]}\"}"
expect_eq "create with a digest for template: 201" "$STATUS" 201
on b api GET /sandboxes/bydigest
expect_eq "GET /sandboxes/bydigest: over raw1, the template with that digest" \
    "$(json template) $(json template_digest)" "raw1 ${digest_of[raw1]}"
expect_eq "... and over raw1.img" "$(json origin.image)" "$TEMPLATES_B/raw1.img"
expect_eq "bydigest's device reads raw1's bytes" "$(device_sha bydigest)" "$(file_sha "$WORK/raw1.img")"
on b api DELETE /sandboxes/bydigest
expect_eq "destroy bydigest" "$STATUS" 204

step "refusals on B leave nothing behind"
before=$(listing "$TEMPLATES_B")
wrong=${digest_of[raw1]}
move a b flat bad "$wrong"
expect_eq "a wrong digest: 400" "$STATUS/$(json error.code)" 400/digest_mismatch
expect_true "... the message has the digest given" grep -qF "$wrong" <<<"$(json error.message)"
expect_true "... and the image's" grep -qF "$D" <<<"$(json error.message)"
nothing_left "a wrong digest" b "$TEMPLATES_B" "$before" bad

on b put_template nodigest "" "$WORK/raw1.img"
expect_eq "no digest: 400" "$STATUS/$(json error.code)" 400/invalid_request
nothing_left "no digest" b "$TEMPLATES_B" "$before" nodigest
on b put_template sha "?digest=sha256:$(sha256sum <"$WORK/raw1.img" | cut -d' ' -f1)" "$WORK/raw1.img"
expect_eq "a digest that is not blocks-sha256-4k: 400" "$STATUS/$(json error.code)" 400/invalid_request
nothing_left "a sha256: digest" b "$TEMPLATES_B" "$before" sha

cp "$WORK/raw1.img" "$WORK/odd.img"
head -c 100 /dev/urandom >>"$WORK/odd.img"
on b put_template odd "?digest=$(blocks_digest "$WORK/odd.img")" "$WORK/odd.img"
expect_eq "a size that is not a multiple of 512: 400" "$STATUS/$(json error.code)" 400/invalid_image
nothing_left "a size not a multiple of 512" b "$TEMPLATES_B" "$before" odd

head -c $((stream_size / 2)) "$WORK/flat.stream" >"$WORK/half.stream"
on b put_template half "?digest=$D" "$WORK/half.stream"
expect_eq "the first half of an image stream, as a whole body: 400" "$STATUS/$(json error.code)" 400/invalid_image
nothing_left "a truncated image stream" b "$TEMPLATES_B" "$before" half

cut_upload b cut1 "$D" "$WORK/flat.stream" length
nothing_left "an upload cut off mid-body (Content-Length)" b "$TEMPLATES_B" "$before" cut1
cut_upload b cut2 "$D" "$WORK/flat.stream" chunked
nothing_left "an upload cut off mid-body (chunked)" b "$TEMPLATES_B" "$before" cut2
cut_upload b cut3 "${digest_of[raw1]}" "$WORK/raw1.img" chunked
nothing_left "a raw upload cut off mid-body (chunked)" b "$TEMPLATES_B" "$before" cut3
on b api GET /healthz
expect_eq "agent B still answers" "$STATUS" 200

on b put_template flat "?digest=${digest_of[raw1]}" "$WORK/raw1.img"
expect_eq "flat with another digest: 409" "$STATUS/$(json error.code)" 409/template_exists
nothing_left "a name taken by another digest" b "$TEMPLATES_B" "$before"
expect_eq "... flat.img untouched" "$(stat -c '%i %y %z' "$TEMPLATES_B/flat.img")" "$stamp"
on b api GET /templates/flat
expect_eq "... and still flat's digest" "$(json digest)" "$D"

step "a sandbox over flat, exported on A, imported and resumed on B"
api POST /sandboxes '{"id": "child", "template": "flat"}'
require "create child over flat on A" [ "$STATUS" == 201 ]
head -c $MIB /dev/urandom >"$WORK/child-data"
dev=/dev/mapper/wrenn-child
dd if="$WORK/child-data" of=$dev bs=1M seek=60 oflag=direct conv=fsync status=none
for at in 10 44; do write_marker $dev "$at" "child marker at $at MiB"; done
child_sha=$(device_sha child)
api POST /sandboxes/child/pause
require "pause child on A" [ "$STATUS" == 200 ]
STATUS=$("${CURL[@]}" -s -o "$WORK/child.wrenn" -w '%{http_code}' --max-time 300 "$URL/sandboxes/child/export")
require "export child from A" [ "$STATUS" == 200 ]
STATUS=$(curl -s --unix-socket "${SOCKS[b]}" -o "$WORK/put.out" -w '%{http_code}' --max-time 300 -X POST \
    -H "$ARCHIVE_TYPE" -T "$WORK/child.wrenn" "$URL/sandboxes/import?id=child")
BODY=$(cat "$WORK/put.out")
require "import child into B: 201" [ "$STATUS" == 201 ]
expect_eq "the import is over B's flat" "$(json template)" flat
on b api POST /sandboxes/child/resume
require "resume child on B" [ "$STATUS" == 200 ]
dev=/dev/mapper/wrenn-child
expect_eq "child on B reads what it read on A" "$(device_sha child)" "$child_sha"
for at in 10 44; do marker_reads "child's marker" $dev "$at" "child marker at $at MiB"; done
expect_eq "child's random MiB" "$(range_sha $dev 60 1)" "$(file_sha "$WORK/child-data")"
for at in 1 24 56 63; do
    marker_reads "flat's marker (src's, through the template)" $dev "$at" "src marker at $at MiB"
done
expect_eq "flat's 4 MiB from src" "$(range_sha $dev 16 4)" "$(file_sha "$WORK/src-data")"
expect_eq "flat's zeros from src" "$(range_sha $dev 48 2)" "$(head -c $((2 * MIB)) /dev/zero | sha256sum | cut -d' ' -f1)"
expect_eq "base's data through flat" "$(range_sha $dev 32 8)" \
    "$(dd if="$TEMPLATES_A/base.img" bs=1M skip=32 count=8 status=none | sha256sum | cut -d' ' -f1)"
on b api POST /sandboxes/child/pause
expect_eq "pause child on B" "$STATUS" 200

step "DELETE /templates/flat on B: refused while child uses it, then 204"
on b api GET /templates/flat
expect_eq "GET /templates/flat lists child as a user, paused" "$(json users.0.id) $(json users.0.state)" "child paused"
on b api DELETE /templates/flat
expect_eq "DELETE a template a paused sandbox uses: 409" "$STATUS/$(json error.code)" 409/template_in_use
expect_true "... naming child" grep -qw child <<<"$(json error.message)"
expect_eq "... flat.img is still there, untouched" "$(stat -c '%i %y %z' "$TEMPLATES_B/flat.img")" "$stamp"
on b api DELETE /sandboxes/child
expect_eq "destroy child on B" "$STATUS" 204
on b api DELETE /templates/flat
expect_eq "DELETE /templates/flat once nobody uses it: 204" "$STATUS" 204
expect_true "flat.img is gone" test ! -e "$TEMPLATES_B/flat.img"
expect_eq "no loop of flat.img" "$(loops_backed_by "$TEMPLATES_B/flat.img")" 0
on b api GET /templates/flat
expect_eq "GET /templates/flat after its delete" "$STATUS/$(json error.code)" 404/template_not_found
on b api DELETE /templates/flat
expect_eq "DELETE it again" "$STATUS/$(json error.code)" 404/template_not_found
api DELETE /sandboxes/child
expect_eq "destroy child on A" "$STATUS" 204

step "agent C, templates on a small ext4, --max-template-bytes 16 MiB: 413 and 507"
truncate -s 96M "$WORK/c-templates.fs"
# No blocks reserved for root (-m 0): the agent runs as root, and free space is then one number.
require "mkfs.ext4 of 96 MiB" mkfs.ext4 -q -F -b 4096 -m 0 "$WORK/c-templates.fs"
require "mount it" mount -o loop "$WORK/c-templates.fs" "$TEMPLATES_C"
require "agent C starts" start_other c "$STATE_C" "$TEMPLATES_C" --max-template-bytes $((16 * MIB))
before=$(listing "$TEMPLATES_C")
sparse_image "$WORK/big.img" 24 0 1
big_digest=$(blocks_digest "$WORK/big.img")
on c put_template big "?digest=$big_digest" "$WORK/big.img"
expect_eq "a raw image over --max-template-bytes (by its Content-Length): 413" \
    "$STATUS/$(json error.code)" 413/payload_too_large
nothing_left "over the limit, raw" c "$TEMPLATES_C" "$before" big
zstd -q -c "$WORK/big.img" >"$WORK/big.img.zst"
on c put_template big "?digest=$big_digest" - < <(cat "$WORK/big.img.zst")
expect_eq "a zstd image over --max-template-bytes, chunked (once the bytes pass it): 413" \
    "$STATUS/$(json error.code)" 413/payload_too_large
nothing_left "over the limit, zstd" c "$TEMPLATES_C" "$before" big
move a c flat big "$D"
expect_eq "A's 64 MiB flat over --max-template-bytes (by the stream's header): 413" \
    "$STATUS/$(json error.code)" 413/payload_too_large
nothing_left "over the limit, image stream" c "$TEMPLATES_C" "$before" big

sparse_image "$WORK/dense.img" 12 0 12
dense_digest=$(blocks_digest "$WORK/dense.img")
free=$(($(stat -f -c '%a * %S' "$TEMPLATES_C")))
require "the small filesystem has more than 14 MiB free ($free bytes)" [ "$free" -gt $((14 * MIB)) ]
require "ballast leaves 6 MiB free" fallocate -l $((free - 6 * MIB)) "$TEMPLATES_C/ballast"
before=$(listing "$TEMPLATES_C")
on c put_template dense "?digest=$dense_digest" "$WORK/dense.img"
expect_eq "12 MiB of data with 6 MiB free (by its Content-Length): 507" \
    "$STATUS/$(json error.code)" 507/insufficient_storage
nothing_left "no room, raw" c "$TEMPLATES_C" "$before" dense
zstd -q -c "$WORK/dense.img" >"$WORK/dense.img.zst"
on c put_template dense "?digest=$dense_digest" - -H 'Content-Type: application/zstd' \
    < <(cat "$WORK/dense.img.zst")
expect_eq "12 MiB of data with 6 MiB free, zstd chunked (while writing): 507" \
    "$STATUS/$(json error.code)" 507/insufficient_storage
nothing_left "no room, zstd" c "$TEMPLATES_C" "$before" dense
rm -f "$TEMPLATES_C/ballast"
on c put_template dense "?digest=$dense_digest" "$WORK/dense.img"
published "with room again, under the limit" c "$TEMPLATES_C" dense "$WORK/dense.img" "$dense_digest"
require "agent C stops" stop_other c
expect_true "C's templates filesystem unmounts (nothing holds it)" umount "$TEMPLATES_C"

require "agent B stops" stop_other b
require "agent A stops" stop_agent
expect_eq "no wrenn- device left" "$(wrenn_devices | wc -l)" 0
expect_eq "no loop left over the agents' files" \
    "$(($(loops_backed_by "$STATE_A") + $(loops_backed_by "$STATE_B") + $(loops_backed_by "$STATE_C")))" 0
finish
