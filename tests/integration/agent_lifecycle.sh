#!/usr/bin/env bash
# The agent end to end, in a real kernel: 8 sandboxes on one template share one loop; writes
# survive pause/resume; a held-open device makes pause fail and the sandbox stays running;
# kill -9 and restart adopts running sandboxes and removes stale devices; --cleanup-stale at
# boot; the listeners (unix socket, TCP with a token, --insecure-tcp) and what they refuse;
# destroy leaves nothing behind. ctest runs it twice: with systemd-udevd (where udev's rules make
# the nodes and the by-id links, and libdm's cookies must not leak semaphores) and without.
here=$(dirname "$0")
source "$here/lib.sh"
sems_before=$(semaphores)

require "no wrenn- devices before the test (the agent would remove them as stale)" \
    test -z "$(wrenn_devices)"
make_template base 64
require "agent starts" start_agent

api GET /healthz
expect_eq "healthz status" "$STATUS" 200
expect_eq "healthz device-mapper usable" "$(json device_mapper.usable)" true

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
[ "$UDEV" == 1 ] && udevadm settle --timeout=60
for i in $(seq 1 8); do
    expect_true "sb$i device node exists" test -b "/dev/mapper/wrenn-sb$i"
    if [ "$UDEV" == 1 ]; then
        expect_true "sb$i has udev's by-id link" test -b "/dev/disk/by-id/dm-name-wrenn-sb$i"
    fi
done
if [ "$UDEV" == 1 ]; then
    # libdm's own debug lines: with udev it hands each node change to udev and waits on a cookie.
    expect_true "the agent synchronises with udev (libdm udev cookies)" grep -q "Udev cookie" "$AGENT_LOG"
fi
# The template's loop is buffered, so the sandboxes share its page cache; CoW loops (private
# data) do direct I/O on XFS.
expect_eq "the template's loop is buffered" "$(loops_dio "$TEMPLATES/base.img")" 0
expect_eq "the CoW loops do direct I/O" "$(loops_dio "$STATE/sandboxes")" 1

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
# As an older agent left it: the template's loop doing direct I/O. The new agent adopts it
# buffered.
losetup --direct-io=on "$(loop_of "$TEMPLATES/base.img")"
expect_eq "the template's loop made direct before the restart" "$(loops_dio "$TEMPLATES/base.img")" 1
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
expect_eq "the adopted template loop is buffered again" "$(loops_dio "$TEMPLATES/base.img")" 0
expect_true "the log says why it was switched" grep -q "switched to buffered I/O" "$AGENT_LOG"
expect_eq "sb3 data after the switch" "$(read_marker /dev/mapper/wrenn-sb3 3 14)" "written-by-sb3"

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
    "$(jq -r '[.sandboxes[].state] | unique | join(" ")' <<<"$BODY")" paused
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

# --- listeners: the unix socket by default; TCP only with a token or --insecure-tcp -------------
expected_mode=600
getent group wrenn >/dev/null && expected_mode=660
expect_true "the agent listens on a unix socket" test -S "$SOCK"
expect_eq "the unix socket's mode" "$(stat -c %a "$SOCK")" "$expected_mode"
# What a program may not send, on the real binary.
STATUS=$(curl --unix-socket "$SOCK" -s -o /dev/null -w '%{http_code}' -H 'Content-Type: text/plain' \
    -d '{"id": "plain", "template": "base"}' http://localhost/sandboxes)
expect_eq "a text/plain body" "$STATUS" 415
STATUS=$(curl --unix-socket "$SOCK" -s -o /dev/null -w '%{http_code}' -H 'Origin: http://evil.example' \
    --json '{"id": "web", "template": "base"}' http://localhost/sandboxes)
expect_eq "a request with an Origin header" "$STATUS" 403
api GET /sandboxes/plain
expect_eq "neither created a sandbox" "$STATUS" 404
expect_true "SIGTERM before the TCP checks" stop_agent
expect_true "the socket file is removed at exit" test ! -e "$SOCK"

"$AGENT" serve --listen "127.0.0.1:$PORT" --state-dir "$STATE" --templates-dir "$TEMPLATES" \
    >"$WORK/no-token.log" 2>&1
expect_eq "a TCP listener without a token refuses to start" "$?" 2
expect_true "and says to give --token-file or --insecure-tcp" \
    grep -q -- "needs --token-file.*--insecure-tcp" "$WORK/no-token.log"
expect_true "having opened no socket" test ! -e "$SOCK"

TOKEN=$WORK/token
head -c 32 /dev/urandom | base64 | tr -d '/+=\n' >"$TOKEN"
chmod 600 "$TOKEN"
printf 'Authorization: Bearer %s\n' "$(cat "$TOKEN")" >"$WORK/auth-header"
LISTEN=(--listen "unix:$SOCK" --listen "127.0.0.1:$PORT" --token-file "$TOKEN")
CURL=(curl -H "@$WORK/auth-header")
URL=http://127.0.0.1:$PORT
require "agent starts with a TCP listener and a token" start_agent
api GET /healthz
expect_eq "TCP with a token: healthz" "$STATUS" 200
expect_eq "not insecure" "$(json insecure_tcp)" false
api GET /sandboxes
expect_eq "TCP with a token: list" "$STATUS" 200
api POST /sandboxes '{"id": "tcp1", "template": "base"}'
expect_eq "TCP with a token: create" "$STATUS" 201
api GET /sandboxes/tcp1
expect_eq "TCP with a token: get" "$STATUS" 200
api POST /sandboxes/tcp1/pause
expect_eq "TCP with a token: pause" "$STATUS" 200
api POST /sandboxes/tcp1/resume
expect_eq "TCP with a token: resume" "$STATUS" 200
api POST /sandboxes/tcp1/pause
api POST /sandboxes/tcp1/flatten '{"template": "tcpgold"}'
expect_eq "TCP with a token: flatten" "$STATUS" 201
api GET /templates
expect_eq "TCP with a token: templates" "$STATUS" 200
api GET /metrics
expect_eq "TCP with a token: metrics" "$STATUS" 200
expect_true "metrics count connections" grep -q '^wrenn_connections_refused_total 0$' <<<"$BODY"
api DELETE /sandboxes/tcp1
expect_eq "TCP with a token: destroy" "$STATUS" 204
api GET /sandboxes/sb1
sb1_state=$(json state)  # paused since --cleanup-stale
CURL=(curl)
for route in "GET /sandboxes" "GET /sandboxes/sb1" "POST /sandboxes/sb1/pause" "DELETE /sandboxes/sb1" \
    "GET /templates" "GET /metrics"; do
    api $route
    expect_eq "TCP without the token: $route" "$STATUS" 401
done
api POST /sandboxes '{"id": "tcp2", "template": "base"}'
expect_eq "TCP without the token: create" "$STATUS" 401
api GET /healthz
expect_eq "TCP without the token: healthz is open to supervisors" "$STATUS" 200
# The token holds on every listener, the unix socket beside TCP included.
CURL=(curl --unix-socket "$SOCK")
URL=http://localhost
api GET /sandboxes/sb1
expect_eq "the unix socket without the token" "$STATUS" 401
CURL=(curl --unix-socket "$SOCK" -H "@$WORK/auth-header")
api GET /sandboxes/sb1
expect_eq "the unix socket with the token" "$STATUS" 200
expect_eq "sb1 untouched by the refused pause and DELETE" "$(json state)" "$sb1_state"
# systemctl reload (SIGHUP) rotates the token; a connection kept open across it is not dropped.
head -c 32 /dev/urandom | base64 | tr -d '/+=\n' >"$WORK/token.new"
python3 - "$PORT" "$AGENT_PID" "$TOKEN" "$WORK/token.new" >"$WORK/rotate.out" 2>&1 <<'PY'
import http.client, signal, os, sys, time
port, pid, path, new_path = sys.argv[1:]
old, new = open(path).read().strip(), open(new_path).read().strip()
conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
def status(token):
    conn.request("GET", "/sandboxes", headers={"Authorization": "Bearer " + token})
    res = conn.getresponse()
    res.read()
    return res.status
print("before", status(old))
with open(path, "w") as f:  # the file keeps its mode 0600
    f.write(new + "\n")
os.kill(int(pid), signal.SIGHUP)
for _ in range(100):
    time.sleep(0.1)
    if status(new) == 200:
        break
print("old", status(old))
print("new", status(new))
with open(path, "w") as f:
    f.write("short\n")
os.kill(int(pid), signal.SIGHUP)
time.sleep(1)
print("after a bad file", status(new))
PY
expect_eq "reload: the old token works before" "$(grep '^before' "$WORK/rotate.out")" "before 200"
expect_eq "reload: the old token is refused after, on the same connection" \
    "$(grep '^old' "$WORK/rotate.out")" "old 401"
expect_eq "reload: the new token works on it" "$(grep '^new' "$WORK/rotate.out")" "new 200"
expect_eq "reload: a bad token file keeps the token in use" \
    "$(grep '^after' "$WORK/rotate.out")" "after a bad file 200"
expect_true "reload: logged" grep -q "SIGHUP: token reloaded from $TOKEN" "$AGENT_LOG"
expect_true "reload: the bad file is logged" grep -q "SIGHUP: .*at least 16 characters" "$AGENT_LOG"
expect_true "the agent still runs" kill -0 "$AGENT_PID"
expect_true "SIGTERM after the token checks" stop_agent

LISTEN=(--listen "unix:$SOCK" --listen "127.0.0.1:$PORT" --insecure-tcp)
CURL=(curl)
URL=http://127.0.0.1:$PORT
require "agent starts with --insecure-tcp" start_agent
api GET /healthz
expect_eq "--insecure-tcp shows in healthz" "$(json insecure_tcp)" true
expect_true "with a warning" test -n "$(json warning)"
expect_true "and in the log" grep -q "without a token (--insecure-tcp)" "$AGENT_LOG"
api GET /sandboxes
expect_eq "--insecure-tcp: list" "$STATUS" 200
STATUS=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: rebind.evil.example' "$URL/sandboxes")
expect_eq "--insecure-tcp: a foreign Host header" "$STATUS" 403
expect_true "SIGTERM after the insecure checks" stop_agent
LISTEN=(--listen "unix:$SOCK")
CURL=(curl --unix-socket "$SOCK")
URL=http://localhost
require "agent starts on its unix socket again" start_agent

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
expect_eq "no /dev/mapper node left" "$(ls /dev/mapper | grep -c '^wrenn-')" 0
if [ "$UDEV" == 1 ]; then
    udevadm settle --timeout=60
    expect_eq "no by-id link left" "$(ls /dev/disk/by-id 2>/dev/null | grep -c 'dm-name-wrenn-')" 0
    expect_eq "no SysV semaphore leaked (libdm's udev cookies)" "$(semaphores)" "$sems_before"
fi

# --- a state dir where direct I/O through a loop fails: overlayfs over tmpfs, as in containers --
# 6.1 takes the direct-I/O flag for a loop over such a file and then fails every read; the
# agent proves direct I/O with a read and falls back to buffered I/O, so sandboxes still work.
OVL=$WORK/ovl
mkdir -p "$OVL/lower" "$OVL/rw" "$OVL/root"
mount -t tmpfs -o size=4g tmpfs "$OVL/rw" && mkdir -p "$OVL/rw/upper" "$OVL/rw/work" &&
    mount -t overlay -o "lowerdir=$OVL/lower,upperdir=$OVL/rw/upper,workdir=$OVL/rw/work" overlay "$OVL/root"
require "an overlay over tmpfs is mounted" test "$(findmnt -n -o FSTYPE "$OVL/root")" == overlay
STATE=$OVL/root/state
TEMPLATES=$STATE/templates
mkdir -p "$TEMPLATES"
make_template base 16
require "agent starts with its state on overlayfs over tmpfs" start_agent
api POST /sandboxes '{"id": "ovl1", "template": "base"}'
expect_eq "create on overlayfs" "$STATUS" 201
expect_true "the log says why the CoW loop is buffered" \
    grep -q "does not do direct I/O through a loop.*using buffered I/O" "$AGENT_LOG"
expect_eq "its CoW loop is buffered" "$(loops_dio "$STATE/sandboxes")" 0
write_marker /dev/mapper/wrenn-ovl1 3 "written-on-ovl"
expect_eq "unwritten blocks read as the template" \
    "$(dd if=/dev/mapper/wrenn-ovl1 bs=1M skip=8 count=1 iflag=direct status=none | sha256sum)" \
    "$(dd if="$TEMPLATES/base.img" bs=1M skip=8 count=1 status=none | sha256sum)"
api POST /sandboxes/ovl1/pause
expect_eq "pause on overlayfs" "$STATUS" 200
api POST /sandboxes/ovl1/resume
expect_eq "resume on overlayfs" "$STATUS" 200
expect_eq "its write after pause and resume" "$(read_marker /dev/mapper/wrenn-ovl1 3 14)" "written-on-ovl"
api DELETE /sandboxes/ovl1
expect_eq "destroy on overlayfs" "$STATUS" 204
expect_eq "no loop left over the overlay" "$(loops_backed_by "$OVL/root")" 0
expect_true "SIGTERM after the overlay run exits 0" stop_agent
finish
