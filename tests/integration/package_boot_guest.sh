#!/usr/bin/env bash
# The guest's half of tests/integration/package_boot.sh (which says what is checked, and why in
# two boots). Runs as scripts/vm --systemd's job: systemd is PID 1, udev runs, and the job starts
# once multi-user.target is reached.
#   package_boot_guest.sh BUILD install DEB NEWER_DEB   boot 1: ends printing CUT-NOW, waiting
#                                                       for the host to cut the power
#   package_boot_guest.sh BUILD after-cut               boot 2
source "$(dirname "$0")/lib.sh"

PHASE=${2:?phase}
SOCK=/run/wrenn/agent.sock
CURL=(curl --unix-socket "$SOCK")
STATE_DIR=/var/lib/wrenn
PERSIST=/scratch/var-lib-wrenn  # the state dir's home on the scratch disk, kept across the cut
EXPECT=/scratch/package-boot.expect

# unit_prop UNIT PROPERTY: systemctl show's value.
unit_prop() { systemctl show -p "$2" --value "$1"; }
main_pid() { unit_prop wrenn-agent.service MainPID; }
# await_active: wrenn-agent.service is active (READY=1 sent) within 60 s.
await_active() {
    local i
    for i in $(seq 120); do
        [ "$(systemctl is-active wrenn-agent.service)" == active ] && return 0
        sleep 0.5
    done
    systemctl status --no-pager wrenn-agent.service >&2
    return 1
}
# as USER METHOD PATH [BODY]: the API as that user (runuser), through curl; sets STATUS and BODY.
as() {
    local user=$1 method=$2 path=$3 data=${4:-} out args
    args=(-s -w '\n%{http_code}' -X "$method" --max-time 60)
    [ -n "$data" ] && args+=(-H 'Content-Type: application/json' -d "$data")
    out=$(runuser -u "$user" -- curl --unix-socket "$SOCK" "${args[@]}" "$URL$path")
    STATUS=${out##*$'\n'}
    BODY=${out%$'\n'*}
}
# agent_log: what the agent logged through journald in this boot.
agent_log() { journalctl -b -o cat --no-pager -u wrenn-agent.service; }
# A writer (lib.sh's: O_DIRECT|O_DSYNC records, acknowledged in $ACKS) on a running sandbox,
# in the background: start_writer DEV FIRST / stop_writer (its exit status: 0 when no write
# failed).
start_writer() {
    rm -f "$WORK/stop"
    writer "$1" "$2" &
    WRITER_PID=$!
}
stop_writer() {
    touch "$WORK/stop"
    wait "$WRITER_PID"
}
# acks_after N: waits until the writer acknowledged N more records than it had.
acks_after() {
    local from want i
    from=$(last_ack)
    want=$((from + $1))
    for i in $(seq 600); do
        [ "$(last_ack)" -ge "$want" ] && return 0
        sleep 0.1
    done
    return 1
}

if [ "$PHASE" == install ]; then
    DEB=$3
    NEWER=$4
    step "boot 1: systemd is PID 1, udev runs; $(cut -d' ' -f1 /proc/uptime) s since the kernel started"
    require "systemd is PID 1" [ "$(cat /proc/1/comm)" == systemd ]
    require "systemd-udevd runs" systemctl is-active --quiet systemd-udevd.service
    # The state dir on the scratch disk, so that the power cut keeps it as a host's disk would:
    # bound over /var/lib/wrenn now, and by a mount unit at the next boot, before the units.
    mkdir -p "$PERSIST" "$STATE_DIR"
    require "bind the state dir" mount --bind "$PERSIST" "$STATE_DIR"
    cat >/etc/systemd/system/var-lib-wrenn.mount <<UNIT
[Unit]
RequiresMountsFor=/scratch

[Mount]
What=$PERSIST
Where=$STATE_DIR
Type=none
Options=bind

[Install]
WantedBy=local-fs.target
UNIT
    mkdir -p /etc/systemd/system/local-fs.target.wants
    ln -sf ../var-lib-wrenn.mount /etc/systemd/system/local-fs.target.wants/

    # The machines' image is a container's, whose policy-rc.d forbids maintainer scripts to
    # start services; a host has none (the guest's root is an overlay: the host keeps its own).
    rm -f /usr/sbin/policy-rc.d
    step "dpkg -i $(basename "$DEB")"
    dpkg -i "$DEB" >"$WORK/dpkg.out" 2>&1
    rc=$?
    cat "$WORK/dpkg.out"
    require "dpkg -i exits 0" [ "$rc" -eq 0 ]
    expect_true "the group wrenn exists" getent group wrenn
    expect_eq "both units enabled" "$(systemctl is-enabled wrenn-agent-cleanup.service wrenn-agent.service | paste -sd ' ')" "enabled enabled"
    require "wrenn-agent.service is active" await_active
    # The agent's Requires= pulled the cleanup in, once, over a state dir with no sandbox yet.
    expect_eq "the cleanup ran before the agent, once" "$(systemctl is-active wrenn-agent-cleanup.service)" active
    expect_true "... and left its mark in /run" test -e /run/wrenn-agent-cleanup.done
    expect_eq "/usr/sbin/wrenn-agent --version names the package's version" \
        "$(/usr/sbin/wrenn-agent --version | head -n 1 | awk '{print $2}')" "$(dpkg-query -W -f='${Version}' wrenn-agent | sed 's/+.*//')"
    expect_eq "the socket: 0660 root:wrenn" "$(stat -c '%a %U:%G' "$SOCK")" "660 root:wrenn"
    expect_true "the state dir: 0700 root" test "$(stat -c '%a %U' "$STATE_DIR")" == "700 root"
    echo "systemd-analyze security: $(systemd-analyze security --no-pager wrenn-agent.service 2>&1 | tail -n 1)"
    status=$(unit_prop wrenn-agent.service StatusText)
    echo "STATUS=$status"
    expect_true "STATUS says it serves, with the counts ('$status')" \
        grep -q "^serving on unix:$SOCK; 0 running, 0 paused$" <<<"$status"

    step "a user in group wrenn creates, pauses and resumes; one not in it is refused"
    mkdir -p "$STATE_DIR/templates"
    head -c $((32 * 1024 * 1024)) /dev/urandom >"$STATE_DIR/templates/base.img"
    require "useradd alice (in wrenn)" useradd -M -N -G wrenn alice
    require "useradd bob" useradd -M -N bob
    as alice POST /sandboxes '{"id": "alice1", "template": "base"}'
    expect_eq "alice: create" "$STATUS" 201
    as alice POST /sandboxes/alice1/pause
    expect_eq "alice: pause" "$STATUS" 200
    as alice POST /sandboxes/alice1/resume
    expect_eq "alice: resume" "$STATUS" 200
    bob_says=$(runuser -u bob -- python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
    print("connected")
except OSError as e:
    print(e.strerror)' "$SOCK")
    expect_eq "bob: connecting to the socket" "$bob_says" "Permission denied"

    step "systemctl restart under an O_DIRECT writer: no I/O error, the sandbox adopted"
    api POST /sandboxes '{"id": "w1", "template": "base"}'
    require "create w1" [ "$STATUS" == 201 ]
    W1=/dev/mapper/wrenn-w1
    start_writer $W1 0
    require "the writer writes" acks_after 5
    pid_before=$(main_pid)
    require "systemctl restart wrenn-agent" systemctl restart wrenn-agent.service
    require "active again" await_active
    expect_true "a new agent process" [ "$(main_pid)" != "$pid_before" ]
    expect_true "the writer goes on after the restart" acks_after 5
    require "no write failed" stop_writer
    api GET /sandboxes/w1
    expect_eq "w1 is running after the restart" "$(json state)" running
    expect_true "the new agent adopted alice1 and w1" grep -q "recovered state: 2 adopted" <<<"$(agent_log | tail -n 60)"
    expect_eq "every acknowledged record reads back" "$(records_in $W1 0 "$(last_ack)")" $(($(last_ack) + 1))

    step "a token rotated by systemctl reload; a connection kept open is not dropped"
    head -c 32 /dev/urandom | base64 | tr -d '/+=\n' >/etc/wrenn-token
    chmod 600 /etc/wrenn-token
    mkdir -p /etc/systemd/system/wrenn-agent.service.d
    printf '[Service]\nExecStart=\nExecStart=/usr/sbin/wrenn-agent serve --state-dir /var/lib/wrenn --log-format json --token-file /etc/wrenn-token\n' \
        >/etc/systemd/system/wrenn-agent.service.d/token.conf
    systemctl daemon-reload
    require "restart with --token-file" systemctl restart wrenn-agent.service
    require "active with a token" await_active
    head -c 32 /dev/urandom | base64 | tr -d '/+=\n' >"$WORK/token.new"
    python3 - "$SOCK" /etc/wrenn-token "$WORK/token.new" >"$WORK/rotate.out" 2>&1 <<'PY'
import http.client, socket, subprocess, sys, time
sock, path, new_path = sys.argv[1:]
old, new = open(path).read().strip(), open(new_path).read().strip()
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sock)
conn = Unix("localhost", timeout=30)
def status(token):
    conn.request("GET", "/sandboxes", headers={"Authorization": "Bearer " + token})
    res = conn.getresponse()
    res.read()
    return res.status
print("before", status(old))
peer = conn.sock.fileno()
with open(path, "w") as f:
    f.write(new + "\n")
subprocess.run(["systemctl", "reload", "wrenn-agent.service"], check=True)
for _ in range(100):
    if status(new) == 200:
        break
    time.sleep(0.1)
print("old", status(old))
print("new", status(new))
print("same connection", conn.sock.fileno() == peer)
PY
    cat "$WORK/rotate.out"
    expect_eq "reload: the old token works before" "$(grep '^before' "$WORK/rotate.out")" "before 200"
    expect_eq "reload: the old token is refused after, on the same connection" "$(grep '^old' "$WORK/rotate.out")" "old 401"
    expect_eq "reload: the new token works on it" "$(grep '^new' "$WORK/rotate.out")" "new 200"
    expect_eq "reload: one connection throughout" "$(grep '^same' "$WORK/rotate.out")" "same connection True"
    rm /etc/systemd/system/wrenn-agent.service.d/token.conf
    systemctl daemon-reload
    require "restart without the token" systemctl restart wrenn-agent.service
    require "active without it" await_active

    step "dpkg -i of a newer build under a running writer: no I/O error, adopted"
    start_writer $W1 $(($(last_ack) + 1))
    require "the writer writes" acks_after 5
    pid_before=$(main_pid)
    dpkg -i "$NEWER" >"$WORK/dpkg.out" 2>&1
    rc=$?
    cat "$WORK/dpkg.out"
    expect_eq "dpkg -i of the newer build exits 0" "$rc" 0
    expect_eq "the newer version is installed" "$(dpkg-query -W -f='${Version}' wrenn-agent)" "$(dpkg-deb -f "$NEWER" Version)"
    require "active after the upgrade" await_active
    expect_true "the upgrade restarted the agent" [ "$(main_pid)" != "$pid_before" ]
    expect_true "the writer goes on after the upgrade" acks_after 5
    require "no write failed across the upgrade" stop_writer
    api GET /sandboxes/w1
    expect_eq "w1 is running after the upgrade" "$(json state)" running
    expect_eq "every acknowledged record reads back" "$(records_in $W1 0 "$(last_ack)")" $(($(last_ack) + 1))
    expect_true "the new agent adopted alice1 and w1" grep -q "recovered state: 2 adopted" <<<"$(agent_log | tail -n 60)"
    expect_eq "the boot cleanup ran once in this boot, at the install, not at the upgrade" \
        "$(journalctl -b -o cat --no-pager -u wrenn-agent-cleanup.service | grep -c 'cleanup-stale: removed')" 1
    expect_true "w1's device is there" test -b $W1

    step "a power cut with running sandboxes"
    api POST /sandboxes '{"id": "p1", "template": "base"}'
    require "create p1" [ "$STATUS" == 201 ]
    head -c $((4 * 1024 * 1024)) /dev/urandom >"$PERSIST/p1-data"
    require "write 4 MiB into p1 (O_DIRECT, fsync)" \
        dd if="$PERSIST/p1-data" of=/dev/mapper/wrenn-p1 bs=1M seek=8 oflag=direct conv=fsync status=none
    {
        echo "w1_last=$(last_ack)"
        echo "p1_sha=$(sha256sum <"$PERSIST/p1-data" | cut -d' ' -f1)"
        echo "base_sha=$(sha256sum <"$STATE_DIR/templates/base.img" | cut -d' ' -f1)"
    } >"$EXPECT"
    cp "$ACKS" "$PERSIST/w1-acks"
    sync
    # The installed package and the system's configuration go to the next boot's root.
    # By their real paths: /lib is a link to usr/lib here, and a "lib" folder in the next
    # root's overlay would hide it.
    files=$(dpkg -L wrenn-agent | while read -r f; do [ -f "$f" ] && readlink -f "$f" | cut -c2-; done)
    # shellcheck disable=SC2086
    require "pack the root's changes on the carry disk" tar -C / -cf /dev/vdc etc var/lib/dpkg var/lib/systemd $files
    sync
    echo "BOOT1 $PASSED passed, $FAILED failed"
    # A writer keeps writing, unacknowledged, until the power goes.
    start_writer $W1 $(($(last_ack) + 1))
    echo "CUT-NOW"
    sleep infinity
fi

# Boot 2, after the power cut: the package is installed, the units ran at boot.
step "boot 2: the boot cleanup, then the agent"
require "systemd is PID 1" [ "$(cat /proc/1/comm)" == systemd ]
require "the state dir is on the scratch disk" mountpoint -q "$STATE_DIR"
source "$EXPECT"
cleanup_done=$(unit_prop wrenn-agent-cleanup.service ExecMainExitTimestampMonotonic)
agent_start=$(unit_prop wrenn-agent.service ExecMainStartTimestampMonotonic)
agent_ready=$(unit_prop wrenn-agent.service ActiveEnterTimestampMonotonic)
printf 'timeline (s since the kernel started): cleanup done %s, agent started %s, READY=1 %s\n' \
    "$(awk -v t="$cleanup_done" 'BEGIN {printf "%.2f", t / 1e6}')" \
    "$(awk -v t="$agent_start" 'BEGIN {printf "%.2f", t / 1e6}')" \
    "$(awk -v t="$agent_ready" 'BEGIN {printf "%.2f", t / 1e6}')"
expect_eq "the cleanup unit ran and succeeded" "$(unit_prop wrenn-agent-cleanup.service Result) $(systemctl is-active wrenn-agent-cleanup.service)" "success active"
expect_true "the cleanup finished before the agent started" [ "$cleanup_done" -gt 0 ] && [ "$cleanup_done" -le "$agent_start" ]
expect_eq "wrenn-agent.service is active (READY=1)" "$(systemctl is-active wrenn-agent.service)" active
expect_true "READY=1 came after the start" [ "$agent_ready" -ge "$agent_start" ]
status=$(unit_prop wrenn-agent.service StatusText)
echo "STATUS=$status"
expect_true "STATUS: 0 running, 3 paused ('$status')" grep -q "; 0 running, 3 paused$" <<<"$status"
expect_true "the cleanup logged what it did" \
    grep -q "marked 3 sandbox(es) paused" <<<"$(journalctl -b -o cat --no-pager -u wrenn-agent-cleanup.service)"
expect_eq "no wrenn- device before a resume" "$(wrenn_devices | wc -l)" 0

step "a restart of the cleanup unit in the same boot does nothing"
pid_before=$(main_pid)
require "systemctl restart wrenn-agent-cleanup" systemctl restart wrenn-agent-cleanup.service
expect_eq "... nor restarts the agent" "$(main_pid)" "$pid_before"
expect_eq "the cleanup ran once in this boot" \
    "$(journalctl -b -o cat --no-pager -u wrenn-agent-cleanup.service | grep -c 'cleanup-stale: removed')" 1

step "resume gives back every acknowledged byte"
for id in w1 p1 alice1; do
    api POST "/sandboxes/$id/resume"
    expect_eq "resume $id" "$STATUS" 200
done
ACKS=$PERSIST/w1-acks
expect_eq "w1: every record acknowledged before the cut" "$(records_in /dev/mapper/wrenn-w1 0 "$w1_last")" $((w1_last + 1))
expect_eq "p1: its 4 MiB" "$(dd if=/dev/mapper/wrenn-p1 bs=1M skip=8 count=4 iflag=direct status=none | sha256sum | cut -d' ' -f1)" "$p1_sha"
expect_eq "alice1: the template's bytes" "$(sha256sum </dev/mapper/wrenn-alice1 | cut -d' ' -f1)" "$base_sha"

step "dpkg --purge leaves every CoW file and record"
before=$(cd "$STATE_DIR" && find sandboxes -type f | sort | xargs sha256sum)
dpkg --purge wrenn-agent >"$WORK/dpkg.out" 2>&1
rc=$?
cat "$WORK/dpkg.out"
expect_eq "dpkg --purge exits 0" "$rc" 0
expect_true "it says the state dir is kept" grep -q "/var/lib/wrenn .* is kept" "$WORK/dpkg.out"
expect_eq "the package is gone" "$(dpkg-query -W -f='${Status}' wrenn-agent 2>/dev/null)" ""
expect_eq "every record and CoW file, byte for byte" "$(cd "$STATE_DIR" && find sandboxes -type f | sort | xargs sha256sum)" "$before"
expect_eq "3 records" "$(echo "$before" | grep -c 'sandbox.json$')" 3
expect_eq "the running sandboxes' devices stay" "$(wrenn_devices | paste -sd ' ')" "wrenn-alice1 wrenn-p1 wrenn-w1"
finish
