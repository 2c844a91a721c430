"""What the benchmark scripts share: calls to the agent over its unix socket, timed from
connect to the answer's last byte, and the order statistics they print."""
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time


class Agent:
    def __init__(self, sock):
        self.sock = sock

    def call(self, method, path, body=None):
        """(status, seconds, raw answer)"""
        data = json.dumps(body) if body is not None else ""
        req = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n{data}")
        start = time.perf_counter()
        s = socket.socket(socket.AF_UNIX)
        s.connect(self.sock)
        s.sendall(req.encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        took = time.perf_counter() - start
        s.close()
        return int(answer.split(b" ", 2)[1]), took, answer

    def must(self, method, path, body=None, want=200, what=None):
        """seconds; exits naming the call when the status is not `want`"""
        status, took, answer = self.call(method, path, body)
        if status != want:
            sys.exit(f"{what or method + ' ' + path}: {status} {answer[-300:]!r}")
        return took


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, sock):
        super().__init__("localhost", blocksize=1 << 20)
        self.unix_path = sock

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.unix_path)


def download(sock, path, dest):
    """GET path into the file dest, streamed: (status, seconds, bytes written, error body)"""
    start = time.perf_counter()
    conn = _UnixConnection(sock)
    conn.request("GET", path)
    res = conn.getresponse()
    written = 0
    if res.status != 200:
        return res.status, time.perf_counter() - start, 0, res.read()
    with open(dest, "wb") as out:
        while piece := res.read(1 << 20):
            out.write(piece)
            written += len(piece)
    conn.close()
    return res.status, time.perf_counter() - start, written, b""


def upload(sock, path, src, content_type):
    """POST the file src as the body, streamed: (status, seconds, answer body)"""
    start = time.perf_counter()
    conn = _UnixConnection(sock)
    with open(src, "rb") as body:
        conn.request("POST", path, body=body, headers={
            "Content-Type": content_type, "Content-Length": str(os.fstat(body.fileno()).st_size)})
        res = conn.getresponse()
        answer = res.read()
    conn.close()
    return res.status, time.perf_counter() - start, answer


class AgentProcess:
    """`wrenn-agent serve` on {work}/agent.sock over `state`, logging to {work}/agent.log, with
    no free-space floor (a benchmark's scratch disk is small); ready when /healthz answers."""

    def __init__(self, binary, work, state, who, args=()):
        sock = f"{work}/agent.sock"
        self.log = open(f"{work}/agent.log", "a")
        self.proc = subprocess.Popen([binary, "serve", "--listen", f"unix:{sock}",
                                      "--state-dir", state, "--min-free", "0", *args],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.sock = sock
        self.api = Agent(sock)
        for _ in range(500):
            try:
                if self.api.call("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                sys.exit(f"{who}: the agent exited at start; see {work}/agent.log")
            time.sleep(0.02)
        sys.exit(f"{who}: the agent did not answer within 10 s")

    def sandbox(self, sid, template="base"):
        self.api.must("POST", "/sandboxes", {"id": sid, "template": template}, want=201)
        return f"/dev/mapper/wrenn-{sid}"

    def destroy(self, sid):
        self.api.must("DELETE", f"/sandboxes/{sid}", want=204)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()


def median(xs):
    return statistics.median(xs)


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]
