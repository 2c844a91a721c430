#!/usr/bin/env bash
# The agent with systemd-udevd running in the guest, as on a production host (every other agent
# test runs without udev, where libdm makes the /dev/mapper nodes itself). With udev, udev's dm
# rules make and remove the nodes and libdm waits for them through SysV semaphores: create,
# pause, resume, destroy and a kill -9 + restart must work, the nodes must come and go with the
# devices, and no semaphore may leak.
here=$(dirname "$0")
source "$here/lib.sh"

require "no wrenn- devices before the test" test -z "$(wrenn_devices)"
step "start systemd-udevd"
mkdir -p /run/udev
require "systemd-udevd starts" /lib/systemd/systemd-udevd --daemon
udevadm trigger --action=add >/dev/null 2>&1
udevadm settle --timeout=60
require "udev's control socket exists (the agent's sign that udev runs)" test -S /run/udev/control
stop_udev() { udevadm control --exit >/dev/null 2>&1; }
semaphores() { ipcs -s | grep -c '^0x'; }
sems_before=$(semaphores)

make_template base 32
require "agent starts" start_agent

step "create 4"
for i in 1 2 3 4; do
    api POST /sandboxes "{\"id\": \"ud$i\", \"template\": \"base\"}"
    expect_eq "create ud$i" "$STATUS" 201
done
udevadm settle --timeout=60
# libdm's own debug lines: in udev mode it hands each node change to udev and waits on a cookie.
expect_true "the agent synchronises with udev (libdm udev cookies)" grep -q "Udev cookie" "$AGENT_LOG"
for i in 1 2 3 4; do
    expect_true "ud$i node exists" test -b "/dev/mapper/wrenn-ud$i"
    write_marker "/dev/mapper/wrenn-ud$i" 2 "udev-sandbox-ud$i"
done

step "pause and resume"
for i in 1 2; do
    api POST "/sandboxes/ud$i/pause"
    expect_eq "pause ud$i" "$STATUS" 200
done
udevadm settle --timeout=60
for i in 1 2; do
    expect_true "ud$i node gone after pause" test ! -e "/dev/mapper/wrenn-ud$i"
    api POST "/sandboxes/ud$i/resume"
    expect_eq "resume ud$i" "$STATUS" 200
done
udevadm settle --timeout=60
for i in 1 2 3 4; do
    expect_eq "ud$i reads its write back" "$(read_marker "/dev/mapper/wrenn-ud$i" 2 16)" "udev-sandbox-ud$i"
done

step "kill -9 and restart: running sandboxes are adopted"
kill_agent
require "agent restarts" start_agent
for i in 1 2 3 4; do
    api GET "/sandboxes/ud$i"
    expect_eq "ud$i still running after the restart" "$(json state)" running
done
expect_eq "no device was removed by the restart" "$(wrenn_devices | wc -l)" 4

step "destroy all"
for i in 1 2 3 4; do
    api DELETE "/sandboxes/ud$i"
    expect_eq "destroy ud$i" "$STATUS" 204
done
udevadm settle --timeout=60
expect_eq "no wrenn- devices left" "$(wrenn_devices | wc -l)" 0
expect_eq "no /dev/mapper nodes left" "$(ls /dev/mapper | grep -c '^wrenn-')" 0
expect_eq "no loops left" "$(loops_backed_by "$WORK")" 0
stop_agent
expect_eq "no SysV semaphore leaked (libdm's udev cookies)" "$(semaphores)" "$sems_before"
stop_udev
finish
