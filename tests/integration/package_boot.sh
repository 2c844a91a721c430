#!/usr/bin/env bash
# The Debian package on a host that boots with systemd as PID 1 (Debian's kernel under qemu,
# scripts/vm --systemd, udev running), in two boots over the same disks:
#   boot 1  dpkg -i the package: the group, both units enabled, the agent active with its
#           STATUS=; a user in group wrenn creates, pauses and resumes, one not in it cannot
#           connect; systemctl restart under an O_DIRECT writer (no I/O error, adopted); a token
#           rotated by systemctl reload with a connection kept open; dpkg -i of a newer build
#           under a writer (no I/O error, adopted, the boot cleanup not run again); then, with
#           three sandboxes running and data acknowledged, the power is cut (qemu SIGKILL).
#   boot 2  the units start at boot: the cleanup first (it marks the sandboxes paused), then the
#           agent (READY=1); the timeline is printed. A second start of the cleanup does nothing;
#           resumes give back every acknowledged byte; dpkg --purge leaves every record and CoW
#           file, byte for byte, and the devices of running sandboxes.
# The package is built here from this tree (scripts/package --nocheck, into BUILD/package-test);
# "the newer build" is that .deb with a higher version (dpkg-deb), so the upgrade path (the
# maintainer scripts, the restart) is what is exercised. The packages installed in boot 1 reach
# boot 2 on scripts/vm's carry disk, as they would be on a host's root disk.
# Runs on the host (it boots the VM itself); fails, never skips, when something cannot run.
#
#   tests/integration/package_boot.sh BUILD_DIR
#   WRENN_PACKAGE_DEB=path/to.deb ... uses that .deb instead of building one
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
BUILD=$(cd "${1:?usage: $0 BUILD_DIR}" 2>/dev/null && pwd)
logs=$BUILD/package-boot-logs
rm -rf "$logs"
mkdir -p "$logs"
disks=$(mktemp -d "${TMPDIR:-/tmp}/wrenn-package-boot.XXXXXX")
vm_pid=""
cleanup() {
    if [ -n "$vm_pid" ] && kill -0 "$vm_pid" 2>/dev/null; then
        kill -KILL "$(cat "$disks/qemu.pid" 2>/dev/null)" 2>/dev/null
        wait "$vm_pid" 2>/dev/null
    fi
    rm -rf "$disks"
}
trap cleanup EXIT
die() {
    echo "FAIL: $*" >&2
    echo "the consoles and the package build's log are in $logs" >&2
    exit 1
}
stamp() { printf '== %(%T)T %s\n' -1 "$*"; }

if [ -n "${WRENN_PACKAGE_DEB:-}" ]; then
    # A .deb built already (scripts/package), to rerun the boots without building again.
    deb=$WRENN_PACKAGE_DEB
else
    stamp "scripts/package --nocheck (log: $logs/package.log)"
    rm -rf "$BUILD/package-test"
    if ! BUILD_DIR=$BUILD/package-test "$root/scripts/package" --nocheck >"$logs/package.log" 2>&1; then
        tail -n 40 "$logs/package.log" >&2
        die "scripts/package failed"
    fi
    sed -n '/^== lintian/,$p' "$logs/package.log"
    deb=$(ls "$BUILD"/package-test/package/wrenn-agent_*.deb 2>/dev/null | head -n 1)
fi
[ -f "$deb" ] || die "scripts/package made no .deb"
version=$(dpkg-deb -f "$deb" Version)
newer="$disks/wrenn-agent_${version}+newer_amd64.deb"
rm -rf "$disks/repack"
dpkg-deb -R "$deb" "$disks/repack" || die "dpkg-deb -R"
sed -i "s/^Version: .*/Version: ${version}+newer/" "$disks/repack/DEBIAN/control"
dpkg-deb -b "$disks/repack" "$newer" >/dev/null || die "dpkg-deb -b"
rm -rf "$disks/repack"
# The guest sees this host's root; a .deb in the temporary folder is visible to it.
cp "$deb" "$disks/"
deb="$disks/$(basename "$deb")"

# Each boot its own prefix (lib.sh's work folder on the scratch disk, which both boots share).
prefix=${WRENN_TEST_PREFIX:-pkgboot$$}
stamp "boot 1: install, restart, reload, upgrade; then the power is cut"
WRENN_TEST_PREFIX=${prefix}a "$root/scripts/vm" --systemd --disk-dir "$disks" --timeout 1200 -- \
    bash "$here/package_boot_guest.sh" "$BUILD" install "$deb" "$newer" >"$logs/boot1.log" 2>&1 &
vm_pid=$!
for _ in $(seq 1200); do
    grep -q '^CUT-NOW' "$logs/boot1.log" && break
    kill -0 "$vm_pid" 2>/dev/null || break
    sleep 1
done
grep -q '^CUT-NOW' "$logs/boot1.log" || {
    grep -E 'FAIL|VMFAIL|^== ' "$logs/boot1.log" >&2
    die "boot 1 ended before its power cut"
}
kill -KILL "$(cat "$disks/qemu.pid")"
wait "$vm_pid" 2>/dev/null
vm_pid=""
grep -E '^== |^FAIL|^STATUS=|^BOOT1 |^systemd-analyze' "$logs/boot1.log"
grep -q '^BOOT1 [0-9]* passed, 0 failed' "$logs/boot1.log" || die "boot 1's checks failed"

stamp "boot 2: after the power cut"
WRENN_TEST_PREFIX=${prefix}b "$root/scripts/vm" --systemd --disk-dir "$disks" --timeout 1200 -- \
    bash "$here/package_boot_guest.sh" "$BUILD" after-cut >"$logs/boot2.log" 2>&1
rc=$?
grep -E '^== |^FAIL|^STATUS=|^timeline|passed, .* failed|^vm:' "$logs/boot2.log"
[ "$rc" -eq 0 ] || die "boot 2's checks failed (exit $rc)"
echo "package boot: both boots passed"
