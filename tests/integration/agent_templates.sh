#!/usr/bin/env bash
# Template identity in a real kernel: a paused sandbox is never resumed over an image other than
# the one it was made over. The template is rewritten in place, replaced by rename, resized and
# removed under a paused sandbox: each resume answers 409 template_changed and leaves the CoW
# as it was; with the original image back, resume works and every byte reads back. Templates
# that are symlinks or writable by others are refused (400); a flattened template is 0444.
here=$(dirname "$0")
source "$here/lib.sh"

require "no wrenn- devices before the test" test -z "$(wrenn_devices)"
make_template base 32
cp "$TEMPLATES/base.img" "$WORK/original.img"
require "agent starts" start_agent

api POST /sandboxes '{"id": "tp1", "template": "base"}'
require "create tp1" test "$STATUS" = 201
original_digest=$(blocks_digest "$WORK/original.img")
expect_eq "tp1's record gets its template's digest (read in the background)" \
    "$(known_digest /sandboxes/tp1 template_digest)" "$original_digest"
expect_true "... and the record on disk has it" grep -q "$original_digest" "$STATE/sandboxes/tp1/sandbox.json"
api GET /templates
expect_eq "GET /templates shows the digest" "$(json templates.0.digest)" "$original_digest"
write_marker /dev/mapper/wrenn-tp1 5 "written-before-pause"
api POST /sandboxes/tp1/pause
require "pause tp1" test "$STATUS" = 200
cow=$STATE/sandboxes/tp1/rootfs.cow
cow_sum=$(sha256sum <"$cow")

refused() {  # what: resume must answer 409 template_changed and leave the CoW as it was
    api POST /sandboxes/tp1/resume
    expect_eq "$1: resume status" "$STATUS" 409
    expect_eq "$1: error code" "$(json error.code)" template_changed
    expect_true "$1: the message says to put the original back" \
        grep -q "put the original image back" <<<"$(json error.message)"
    expect_eq "$1: the CoW is untouched" "$(sha256sum <"$cow")" "$cow_sum"
    expect_eq "$1: no device" "$(wrenn_devices | grep -c '^wrenn-tp1$')" 0
}

step "rewritten in place, same size"
dd if=/dev/urandom of="$TEMPLATES/base.img" bs=1M count=1 seek=7 conv=notrunc status=none
refused "rewritten in place"

step "replaced by rename"
head -c $((32 * 1024 * 1024)) /dev/urandom >"$TEMPLATES/base.img.new"
mv "$TEMPLATES/base.img.new" "$TEMPLATES/base.img"
refused "replaced by rename"

step "resized"
cp "$WORK/original.img" "$TEMPLATES/base.img.new"
truncate -s 33M "$TEMPLATES/base.img.new"
mv "$TEMPLATES/base.img.new" "$TEMPLATES/base.img"
refused "resized"
expect_true "the message names the size change" grep -q "size 33554432 -> 34603008" <<<"$(json error.message)"

step "removed"
rm "$TEMPLATES/base.img"
refused "removed"

step "restored (a copy of the original, by rename)"
cp "$WORK/original.img" "$TEMPLATES/base.img.new"
mv "$TEMPLATES/base.img.new" "$TEMPLATES/base.img"
api POST /sandboxes/tp1/resume
expect_eq "resume over the restored template" "$STATUS" 200
expect_eq "the write before the pause reads back" \
    "$(read_marker /dev/mapper/wrenn-tp1 5 20)" "written-before-pause"
expect_eq "unwritten blocks read as the original template" \
    "$(dd if=/dev/mapper/wrenn-tp1 bs=1M skip=20 count=4 iflag=direct status=none | sha256sum)" \
    "$(dd if="$WORK/original.img" bs=1M skip=20 count=4 status=none | sha256sum)"

step "replaced by rename while tp1 runs: a new create uses the new image, tp1 keeps the old"
head -c $((32 * 1024 * 1024)) /dev/urandom >"$WORK/other.img"
cp "$WORK/other.img" "$TEMPLATES/base.img.new"
mv "$TEMPLATES/base.img.new" "$TEMPLATES/base.img"
api POST /sandboxes '{"id": "tp2", "template": "base"}'
expect_eq "create over the new image" "$STATUS" 201
expect_eq "tp2 reads the new image" \
    "$(dd if=/dev/mapper/wrenn-tp2 bs=1M skip=20 count=4 iflag=direct status=none | sha256sum)" \
    "$(dd if="$WORK/other.img" bs=1M skip=20 count=4 status=none | sha256sum)"
expect_eq "tp1 still reads the image it was made over" \
    "$(dd if=/dev/mapper/wrenn-tp1 bs=1M skip=20 count=4 iflag=direct status=none | sha256sum)" \
    "$(dd if="$WORK/original.img" bs=1M skip=20 count=4 status=none | sha256sum)"
# The replaced image's loop shows its backing file as "<path> (deleted)".
expect_eq "two template loops: one per image" \
    "$(cat /sys/block/loop*/loop/backing_file 2>/dev/null | grep -c "^$TEMPLATES/base.img")" 2

step "templates the agent refuses"
ln -s "$WORK/original.img" "$TEMPLATES/linked.img"
api POST /sandboxes '{"id": "tp3", "template": "linked"}'
expect_eq "a symlinked template" "$STATUS" 400
expect_true "the message says symlink" grep -q symlink <<<"$(json error.message)"
cp "$WORK/original.img" "$TEMPLATES/open.img"
chmod 0666 "$TEMPLATES/open.img"
api POST /sandboxes '{"id": "tp3", "template": "open"}'
expect_eq "a template writable by others" "$STATUS" 400
expect_true "the message says so" grep -q "writable by other users" <<<"$(json error.message)"
expect_eq "no device for the refused creates" "$(wrenn_devices | grep -c '^wrenn-tp3$')" 0

step "flatten writes a read-only template, its digest derived from the origin's"
expect_eq "tp2's template digest" "$(known_digest /sandboxes/tp2 template_digest)" \
    "$(blocks_digest "$WORK/other.img")"
write_marker /dev/mapper/wrenn-tp2 7 "written-in-tp2"
api POST /sandboxes/tp2/pause
expect_eq "pause tp2" "$STATUS" 200
api POST /sandboxes/tp2/flatten '{"template": "derived"}'
expect_eq "flatten tp2" "$STATUS" 201
expect_eq "the flattened template is 0444" "$(stat -c %a "$TEMPLATES/derived.img")" 444
expect_eq "flatten answers the new image's digest at once" "$(json digest)" \
    "$(blocks_digest "$TEMPLATES/derived.img")"
expect_eq "the new image holds tp2's write" "$(read_marker "$TEMPLATES/derived.img" 7 14)" \
    "written-in-tp2"

for id in tp1 tp2; do
    api DELETE "/sandboxes/$id"
    expect_eq "destroy $id" "$STATUS" 204
done
expect_eq "no template loops left" "$(loops_backed_by "$TEMPLATES")" 0
finish
