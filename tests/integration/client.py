"""The shell tests' one long-lived helper (lib.sh starts it once per test): HTTP requests to the
agent's unix socket, JSON fields, and record checks, each answered in milliseconds. Under TCG a
program costs 0.04 to 0.3 s to start (curl about 0.3 s, jq as much), and a suite makes hundreds
of calls.

Protocol, on stdin and stdout: a command line "NAME ARG... LEN", then LEN bytes of payload; the
answer is a line "CODE LEN", then LEN bytes. Every argument is one word (no spaces).
  http SOCK METHOD PATH LEN + body   CODE is the HTTP status, 000 when no answer came (curl's -w)
  json FIELD LEN + document     the field, dotted ("templates.0.sha256"), printed as jq -r does
  ids STATE LEN + document      the sandbox ids (those in STATE; "-" for all), sorted, one a line
  records DEV FIRST LAST 0      how many blocks N in FIRST..LAST hold "record N" (O_DIRECT reads)
  health SOCK PID 0             waits up to 10 s for /healthz to answer (any status); CODE 1
                                if PID exited first
  batch SOCK DIR LEN + lines    sends every request at once, one thread each; a line is
                                "NAME METHOD PATH [BODY]"; each answer goes to DIR/NAME (the
                                status, as curl -w '%{http_code}' writes it) and DIR/NAME.body;
                                CODE comes once all have answered
"""

import http.client
import json
import mmap
import os
import socket
import sys
import threading
import time

REC = 4096  # lib.sh's record size: "record N" in block N


class UnixConnection(http.client.HTTPConnection):  # power_cut_guest.py uses it too
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def request(sock_path, method, path, body, timeout=60):
    """(status, body); status 0 when the agent did not answer (refused, reset, timed out)."""
    conn = UnixConnection(sock_path, timeout)
    headers = {"Content-Type": "application/json"} if body else {}
    try:
        conn.request(method, path, body=body or None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        conn.close()


def jq_text(value):
    """What jq -r prints for a value, without its newline; nothing for null."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, indent=2)
    return json.dumps(value)


def field(document, dotted):
    value = json.loads(document)
    for part in dotted.split("."):
        if isinstance(value, list) and part.isdigit():
            value = value[int(part)] if int(part) < len(value) else None
        elif isinstance(value, dict):
            value = value.get(part)
        else:
            return None
    return value


def sandbox_ids(document, state):
    listed = json.loads(document)["sandboxes"]
    return sorted(s["id"] for s in listed if state == "-" or s["state"] == state)


def records(dev, first, last):
    fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, REC)  # page-aligned, as O_DIRECT needs
    found = 0
    try:
        for n in range(first, last + 1):
            if os.preadv(fd, [buf], n * REC) != REC:
                raise OSError(f"short read of block {n} of {dev}")
            found += buf[:].rstrip(b"\0") == b"record %d" % n
    finally:
        os.close(fd)
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def health(sock_path, pid):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if request(sock_path, "GET", "/healthz", b"", timeout=1)[0] != 0:  # any answer
            return 0, b""
        if not alive(pid):
            return 1, b"agent exited at start"
        time.sleep(0.05)
    return 1, b"agent did not answer within 10 s"


def batch(sock_path, out_dir, lines):
    """Every request in flight at once: the threads wait for each other, then all send."""
    calls = [line.split(" ", 3) for line in lines.decode().splitlines() if line]
    ready = threading.Barrier(len(calls))

    def one(name, method, path, body=""):
        ready.wait()
        status, answer_body = request(sock_path, method, path, body.encode(), timeout=120)
        with open(os.path.join(out_dir, name + ".body"), "wb") as f:
            f.write(answer_body)
        with open(os.path.join(out_dir, name), "w") as f:
            f.write("%03d" % status)

    threads = [threading.Thread(target=one, args=call) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0, b""


def answer(args, payload):
    name = args[0]
    if name == "http":
        return request(args[1], args[2], args[3], payload)
    if not payload.strip() and name in ("json", "ids"):
        return 0, b""  # as jq prints for no input
    if name == "json":
        return 0, jq_text(field(payload, args[1])).encode()
    if name == "ids":
        return 0, "".join(i + "\n" for i in sandbox_ids(payload, args[1])).encode()
    if name == "records":
        return 0, str(records(args[1], int(args[2]), int(args[3]))).encode()
    if name == "batch":
        return batch(args[1], args[2], payload)
    if name == "health":
        return health(args[1], int(args[2]))
    return 2, f"unknown command {name}".encode()


def main():
    cin, cout = sys.stdin.buffer, sys.stdout.buffer
    while line := cin.readline():
        *args, length = line.decode().split()
        payload = cin.read(int(length))
        try:
            code, out = answer(args, payload)
        except Exception as e:  # the shell waits for an answer: give it one, with the reason
            code, out = 2, f"{type(e).__name__}: {e}".encode()
        cout.write(b"%03d %d\n" % (code, len(out)) + out)
        cout.flush()


if __name__ == "__main__":
    main()
