#!/usr/bin/env python3
"""The guest side of the power-cut test (tests/integration/power_cut.sh drives it, one boot at a
time, over the same kept disks).

  power_cut_guest.py BUILD SEED BOOT work                 set up, then the workload until the cut
  power_cut_guest.py BUILD SEED BOOT check-work LOG...    check what the logs promised, then work
  power_cut_guest.py BUILD SEED BOOT check-finish LOG...  check, then destroy all: nothing left

The workload: three clients, each on its own sandboxes, create, write 4 KiB records with
O_DIRECT + fsync, pause, resume and destroy, at random (seeded). Each operation is announced on
the serial console before it starts ("PC BEGIN ...") and acknowledged after it succeeded
("PC DONE ..."): after an fsync for a write, after the agent's 2xx for the rest. Every line is
drained to the serial port (tcdrain) before the client goes on, so a line qemu has not sent
yet can only be the last one of its client: after a cut each client has at most one operation
whose outcome is unknown (BEGIN without DONE), and that one may have happened or not.

The check rebuilds from the logs of the earlier boots what must hold, and asserts it against
the recovered agent and the kernel: every sandbox whose create was acknowledged and whose
destroy was not exists, paused (its device went with the machine); every destroyed one is gone;
no sandbox nobody made; every block of every sandbox reads as the last acknowledged record
written there (or the unknown one in flight), never torn, and unwritten blocks read as the
template; no wrenn- device is suspended or invalid. It then prints what it saw ("PC SEEN ..."),
which the next check starts from.
"""
import json
import mmap
import os
import random
import re
import subprocess
import sys
import termios
import threading
import time

from client import UnixConnection

BLOCK = 4096
NBLK = 64  # records go to the first 64 chunks of each sandbox, so blocks are written again
TEMPLATE_MIB = 8
CLIENTS = 3
PREFIX = os.environ.get("WRENN_TEST_PREFIX", "powercut")
WORK = f"/scratch/{PREFIX}"
STATE = f"{WORK}/state"
TEMPLATES = f"{STATE}/templates"
TEMPLATE = f"{TEMPLATES}/base.img"
AGENT_LOG = f"{WORK}/agent.log"
# The socket lives on /run, fresh each boot, as in production (/run/wrenn/agent.sock).
SOCK = "/run/wrenn-powercut/agent.sock"

console_lock = threading.Lock()
console = None  # /dev/console, the serial port (opened at the first line)
failures = []


def say(line):
    """One line to the serial console, sent out of the guest before this returns."""
    global console
    with console_lock:
        if console is None:
            console = os.open("/dev/console", os.O_WRONLY | os.O_NOCTTY)
        os.write(console, (line + "\n").encode())
        termios.tcdrain(console)


def pc_line(*words):
    """A line the next check reads back: "PC <words> END" (a line cut short or garbled by the
    cut has no END and is ignored)."""
    return " ".join(["PC", *map(str, words), "END"])


def pc(*words):
    say(pc_line(*words))


def fail(what):
    failures.append(what)
    say(f"FAIL: {what}")


def expect(what, ok):
    if not ok:
        fail(what)
    return ok


# --- the agent -----------------------------------------------------------------------------------
def api(method, path, body=None):
    """(status, parsed JSON body or None); raises when no answer came."""
    conn = UnixConnection(SOCK, 120)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, (json.loads(data) if data else None)
    finally:
        conn.close()


def start_agent(cleanup_stale=False):
    agent = os.path.join(BUILD, "wrenn-agent")
    os.makedirs(os.path.dirname(SOCK), exist_ok=True)
    log = open(AGENT_LOG, "ab")
    log.write(f"=== boot {BOOT}\n".encode())
    log.flush()
    if cleanup_stale:  # what wrenn-agent-cleanup.service does at boot
        rc = subprocess.call([agent, "--cleanup-stale", "--state-dir", STATE], stdout=log, stderr=log)
        if not expect(f"--cleanup-stale after the power cut exits 0 (got {rc})", rc == 0):
            return None
    proc = subprocess.Popen([agent, "serve", "--listen", f"unix:{SOCK}", "--state-dir", STATE,
                             "--templates-dir", TEMPLATES, "--log-level", "debug"],
                            stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"the agent exited at start with status {proc.returncode}")
            return None
        try:
            if api("GET", "/healthz")[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    fail("the agent did not answer /healthz within 60 s")
    return None


def stop_agent(proc):
    proc.terminate()
    expect("SIGTERM stops the agent with status 0", proc.wait(timeout=120) == 0)


# --- the kernel ----------------------------------------------------------------------------------
def dmsetup(*args):
    return subprocess.run(["dmsetup", *args], capture_output=True, text=True).stdout


def wrenn_devices():
    names = [line.split()[0] for line in dmsetup("ls").splitlines() if line.strip()]
    return sorted(n for n in names if n.startswith("wrenn-"))


def loops_backed_by(prefix):
    n = 0
    for dev in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{dev}/loop/backing_file") as f:
                backing = f.read().strip()
        except OSError:
            continue
        if backing == prefix or backing.startswith(prefix + "/"):
            n += 1
    return n


def check_devices_healthy(where):
    for name in wrenn_devices():
        info = dmsetup("info", name)
        expect(f"{where}: {name} is active, not suspended ({info.strip()!r})",
               re.search(r"^State:\s+ACTIVE$", info, re.M) is not None)
        status = dmsetup("status", name)
        expect(f"{where}: {name} is a valid snapshot ({status.strip()!r})",
               " snapshot " in status and not any(w in status for w in ("Invalid", "Overflow", "Unknown")))


# --- records -------------------------------------------------------------------------------------
def record(sid, blk, seq):
    head = f"wrenn-powercut {sid} {blk} {seq}\n".encode()
    return (head * (BLOCK // len(head) + 1))[:BLOCK]


def template_block(blk):
    return TEMPLATE_DATA[blk * BLOCK:(blk + 1) * BLOCK]


def classify(sid, blk, data):
    """The seq of the record the block holds, 0 for the template's bytes, None for anything else."""
    if data == template_block(blk):
        return 0
    head = data.split(b"\n", 1)[0].decode(errors="replace").split()
    if len(head) == 4 and head[:3] == ["wrenn-powercut", sid, str(blk)] and head[3].isdigit():
        if data == record(sid, blk, int(head[3])):
            return int(head[3])
    return None


def read_blocks(dev, blk, count):
    """count blocks from blk on, read as a VMM reads its disk (O_DIRECT)."""
    buf = mmap.mmap(-1, count * BLOCK)  # page-aligned, as O_DIRECT needs
    fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
    try:
        n = os.preadv(fd, [buf], blk * BLOCK)
    finally:
        os.close(fd)
    return bytes(buf[:n])


def write_block(dev, blk, data):
    buf = mmap.mmap(-1, BLOCK)
    buf[:] = data
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    try:
        os.pwritev(fd, [buf], blk * BLOCK)
        os.fsync(fd)
    finally:
        os.close(fd)


# --- what the logs promise -----------------------------------------------------------------------
class Expected:
    """Per sandbox: the states it may be in and, per block, the records it may hold (0 = the
    template's bytes). Operations a log acknowledged are facts; the one each client had begun
    and not acknowledged at the cut may have happened or not."""

    def __init__(self):
        self.states = {}  # id -> set of "gone", "running", "paused"
        self.blocks = {}  # id -> {blk: set of seqs}
        self.acked = 0

    def apply(self, op, sid, args, certain):
        after = {"create": "running", "pause": "paused", "resume": "running", "destroy": "gone"}
        if op == "create":
            self.states[sid] = {"running"} if certain else {"gone", "running"}
            self.blocks[sid] = {}
        elif op == "write":
            blk, seq = int(args[0]), int(args[1])
            allowed = self.blocks[sid].setdefault(blk, {0})
            if certain:
                allowed.clear()
            allowed.add(seq)
        else:
            if certain:
                self.states[sid] = {after[op]}
            else:
                self.states[sid] |= {after[op]}
        if certain:
            self.acked += 1

    def read_log(self, path):
        pending = {}  # client -> (op, id, args) begun and not acknowledged
        with open(path, errors="replace") as f:
            for line in f:
                words = line.split()
                if len(words) < 3 or words[0] != "PC" or words[-1] != "END" or not line.endswith("\n"):
                    continue
                words = words[:-1]
                kind = words[1]
                if kind == "SNAPSHOT":  # a check's findings: the truth from here on
                    self.states, self.blocks = {}, {}
                elif kind == "SEEN" and len(words) == 4:
                    self.states[words[2]] = {words[3]}
                    self.blocks.setdefault(words[2], {})
                elif kind == "SEEN-BLK" and len(words) == 5:
                    self.blocks[words[2]][int(words[3])] = {int(words[4])}
                elif kind in ("BEGIN", "DONE") and len(words) >= 5:
                    client, op, sid, args = words[2], words[3], words[4], words[5:]
                    if kind == "BEGIN":
                        if client in pending:  # its DONE line was garbled: it did finish
                            self.apply(*pending.pop(client), certain=True)
                        pending[client] = (op, sid, args)
                    else:
                        pending.pop(client, None)
                        self.apply(op, sid, args, certain=True)
        for op, sid, args in pending.values():  # cut in flight
            self.apply(op, sid, args, certain=False)


def check(logs, cleanup_stale):
    started = time.monotonic()
    exp = Expected()
    for log in logs:
        exp.read_log(log)
    say(f"PC INFO checking {len(exp.states)} sandboxes, {exp.acked} acknowledged operations, "
        f"{sum(len(b) for b in exp.blocks.values())} written blocks")
    expect("the logs acknowledged operations before the cut (else the test tested nothing)", exp.acked > 0)
    with open(TEMPLATE, "rb") as f:
        expect("the template is byte for byte as it was made", f.read() == TEMPLATE_DATA)
    proc = start_agent(cleanup_stale)
    if proc is None:
        return None, exp
    say(f"PC INFO t={time.monotonic():.1f} s: the agent recovered and serves")
    expect("after the power cut no wrenn- device exists before any resume", wrenn_devices() == [])
    status, body = api("GET", "/sandboxes")
    if not expect(f"GET /sandboxes answers 200 (got {status})", status == 200):
        return proc, exp
    listed = {s["id"]: s["state"] for s in body["sandboxes"]}
    for sid in sorted(set(listed) - set(exp.states)):
        fail(f"{sid} exists but no create of it was ever begun")
    pc("SNAPSHOT")
    for sid, states in sorted(exp.states.items()):
        if sid not in listed:
            expect(f"{sid} is gone; its acknowledged operations allow only {sorted(states)}",
                   "gone" in states)
            continue
        expect(f"{sid} exists; its acknowledged operations allow only {sorted(states)}",
               states & {"running", "paused"})
        expect(f"{sid} is paused after the power cut (its device went with the machine), "
               f"not {listed[sid]}", listed[sid] == "paused")
        status, body = api("POST", f"/sandboxes/{sid}/resume")
        if not expect(f"resume {sid} after the power cut answers 200 (got {status}: {body})", status == 200):
            continue
        dev = f"/dev/mapper/wrenn-{sid}"
        seen = [pc_line("SEEN", sid, "running")]
        data = read_blocks(dev, 0, NBLK)
        for blk in range(NBLK):
            allowed = exp.blocks[sid].get(blk, {0})
            got = classify(sid, blk, data[blk * BLOCK:(blk + 1) * BLOCK])
            what = "torn or foreign bytes" if got is None else ("the template" if got == 0 else f"record {got}")
            if expect(f"{sid} block {blk} holds {what}; acknowledged: "
                      f"{'the template' if allowed == {0} else sorted(allowed)}", got in allowed):
                if got != 0:
                    seen.append(pc_line("SEEN-BLK", sid, blk, got))
        say("\n".join(seen))
        expect(f"{sid} reads the template past its records",
               read_blocks(dev, NBLK, NBLK) == TEMPLATE_DATA[NBLK * BLOCK:2 * NBLK * BLOCK])
    check_devices_healthy("after the check")
    say(f"PC INFO t={time.monotonic():.1f} s: the check took {time.monotonic() - started:.1f} s")
    expect("the devices are exactly the resumed sandboxes",
           wrenn_devices() == sorted(f"wrenn-{s}" for s in listed if s in exp.states))
    return proc, exp


# --- the workload --------------------------------------------------------------------------------
def client(n, owned, stop):
    try:
        run_client(n, owned, stop)
    except Exception as e:  # noqa: BLE001 - any error ends the workload, which fails the test
        fail(f"client {n}: {e!r}")
        stop.set()


def run_client(n, owned, stop):
    rng = random.Random(f"{SEED}-{BOOT}-{n}")
    name = f"c{n}"
    made = 0
    seq = BOOT * 1_000_000
    while not stop.is_set():
        running = [s for s, st in owned.items() if st == "running"]
        paused = [s for s, st in owned.items() if st == "paused"]
        choices = []
        if len(owned) < 3:
            choices += ["create"] * (3 if len(owned) < 2 else 1)
        choices += ["write"] * 6 * bool(running) + ["pause"] * 2 * bool(running)
        choices += ["resume"] * 2 * bool(paused) + ["destroy"] * (len(owned) > 1)
        op = rng.choice(choices)
        if op == "create":
            made += 1
            sid = f"b{BOOT}c{n}s{made}"
        else:
            sid = rng.choice(running if op in ("write", "pause") else paused if op == "resume" else list(owned))
        args = []
        if op == "write":
            seq += 1
            args = [str(rng.randrange(NBLK)), str(seq)]
        pc("BEGIN", name, op, sid, *args)
        try:
            if op == "write":
                write_block(f"/dev/mapper/wrenn-{sid}", int(args[0]), record(sid, int(args[0]), seq))
                ok = True
            else:
                method, path, body, want = {
                    "create": ("POST", "/sandboxes", {"id": sid, "template": "base"}, 201),
                    "pause": ("POST", f"/sandboxes/{sid}/pause", None, 200),
                    "resume": ("POST", f"/sandboxes/{sid}/resume", None, 200),
                    "destroy": ("DELETE", f"/sandboxes/{sid}", None, 204),
                }[op]
                status, answer = api(method, path, body)
                ok = expect(f"{op} {sid} answers {want} (got {status}: {answer})", status == want)
        except OSError as e:
            ok = expect(f"{op} {sid}: {e}", False)
        if not ok:
            stop.set()
            return
        pc("DONE", name, op, sid, *args)
        if op == "destroy":
            del owned[sid]
        else:
            owned[sid] = {"create": "running", "write": "running", "pause": "paused", "resume": "running"}[op]


def work(survivors):
    owned = [dict() for _ in range(CLIENTS)]
    for i, sid in enumerate(sorted(survivors)):
        owned[i % CLIENTS][sid] = "running"
    stop = threading.Event()
    threads = [threading.Thread(target=client, args=(n, owned[n], stop)) for n in range(CLIENTS)]
    say(f"PC INFO t={time.monotonic():.1f} s: workload starts")
    pc("WORKLOAD-START")
    for t in threads:
        t.start()
    for t in threads:
        t.join()  # only a failure ends the workload: the power cut is meant to come first
    fail("the workload stopped before the power cut")


def main():
    global BUILD, SEED, BOOT, TEMPLATE_DATA
    BUILD, SEED, BOOT, mode, logs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:]
    TEMPLATE_DATA = random.Random(SEED).randbytes(TEMPLATE_MIB * 1024 * 1024)
    say(f"PC INFO t={time.monotonic():.1f} s: {mode} starts")
    if mode == "work":
        os.makedirs(TEMPLATES, exist_ok=True)
        with open(TEMPLATE, "wb") as f:
            f.write(TEMPLATE_DATA)
            os.fsync(f.fileno())
        os.sync()
        if start_agent() is not None:
            work([])
    else:
        proc, exp = check(logs, cleanup_stale=(mode == "check-finish"))
        if failures:
            say(f"PC CHECK FAILED: {len(failures)} failures")
        elif mode == "check-work":
            say("PC CHECK PASSED")
            work([s["id"] for s in api("GET", "/sandboxes")[1]["sandboxes"]])  # all running now
        else:
            say("PC CHECK PASSED")
            for sid in [s["id"] for s in api("GET", "/sandboxes")[1]["sandboxes"]]:
                status, body = api("DELETE", f"/sandboxes/{sid}")
                expect(f"destroy {sid} answers 204 (got {status}: {body})", status == 204)
            expect("no wrenn- device is left", wrenn_devices() == [])
            expect("no loop over the state dir is left", loops_backed_by(STATE) == 0)
            cows = [os.path.join(d, f) for d, _, fs in os.walk(f"{STATE}/sandboxes") for f in fs]
            expect(f"no CoW or record is left ({cows})", cows == [])
            expect("no sandbox folder is left", os.listdir(f"{STATE}/sandboxes") == [])
            stop_agent(proc)
            say(f"PC INFO t={time.monotonic():.1f} s: all destroyed")
    if failures:
        with open(AGENT_LOG, errors="replace") as f:
            tail = f.readlines()[-60:]
        say("--- agent log (last 60 lines) ---\n" + "".join(tail).rstrip())
        say(f"PC RESULT {len(failures)} failed")
        sys.exit(1)
    say("PC RESULT passed")


if __name__ == "__main__":
    main()
