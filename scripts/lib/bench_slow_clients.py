"""The guest side of scripts/bench-slow-clients (see there)."""
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from agentclient import AgentProcess, download, median, upload  # noqa: E402
from results import result  # noqa: E402

build, runs, stalled, prefix = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
binary = os.path.join(build, "wrenn-agent")
work = f"/scratch/{prefix}"
state = f"{work}/state"
TEMPLATE_MIB = 64


def step(what):
    print(f"== {time.strftime('%T')} {what}", file=sys.stderr, flush=True)


class StalledUploads:
    """`count` imports that announce the whole archive, send its first 64 bytes, then one byte
    every 5 s (each read makes progress within the agent's read timeout) until stopped."""

    def __init__(self, sock, archive, count):
        with open(archive, "rb") as f:
            self.data = f.read()
        self.conns, self.sent, self.stop_flag = [], 64, threading.Event()
        for i in range(count):
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
            s.sendall((f"POST /sandboxes/import?id=stall{i} HTTP/1.1\r\nHost: localhost\r\n"
                       f"Content-Type: application/vnd.wrenn.sandbox\r\n"
                       f"Content-Length: {len(self.data)}\r\n\r\n").encode() + self.data[:64])
            self.conns.append(s)
        self.thread = threading.Thread(target=self._trickle)
        self.thread.start()

    def _trickle(self):
        while not self.stop_flag.wait(5):
            for s in self.conns:
                s.sendall(self.data[self.sent:self.sent + 1])
            self.sent += 1

    def close(self):
        self.stop_flag.set()
        self.thread.join()
        for s in self.conns:
            s.close()


def timed_creates(agent, tag):
    times = []
    for r in range(runs):
        times.append(agent.api.must("POST", "/sandboxes", {"id": f"{tag}{r}", "template": "base"},
                                    want=201))
        agent.destroy(f"{tag}{r}")
    return times


def main():
    os.makedirs(f"{state}/templates", exist_ok=True)
    subprocess.run(["dd", "if=/dev/urandom", f"of={state}/templates/base.img", "bs=1M",
                    f"count={TEMPLATE_MIB}", "status=none"], check=True)
    agent = AgentProcess(binary, work, state, "bench-slow-clients",
                         ["--max-transfers", str(stalled), "--min-transfer-rate", "0"])
    agent.sandbox("src")
    agent.api.must("POST", "/sandboxes/src/pause")
    archive = f"{work}/src.wrenn"
    status, _, _, err = download(agent.sock, "/sandboxes/src/export", archive)
    if status != 200:
        sys.exit(f"bench-slow-clients: export: {status} {err[-300:]!r}")

    step(f"{runs} creates, idle")
    idle = timed_creates(agent, "idle")
    step(f"{runs} creates with {stalled} stalled uploads open")
    uploads = StalledUploads(agent.sock, archive, stalled)
    # Every slot is taken once one more transfer is refused (until then, one more may get in).
    for _ in range(500):
        status = upload(agent.sock, "/sandboxes/import?id=extra", archive,
                        "application/vnd.wrenn.sandbox")[0]
        if status == 503:
            break
        if status == 201:
            agent.destroy("extra")
        time.sleep(0.02)
    if status != 503:
        sys.exit(f"bench-slow-clients: the {stalled} uploads never filled --max-transfers")
    busy = timed_creates(agent, "busy")
    uploads.close()
    agent.stop()

    m_idle, m_busy = median(idle), median(busy)
    print(f"bench-slow-clients: {TEMPLATE_MIB} MiB template; create then destroy, {runs} times "
          f"each way, create timed from connect to the answer's last byte")
    print(f"create, idle                          median {m_idle * 1000:8.1f} ms")
    print(f"create, {stalled:2d} stalled uploads open     median {m_busy * 1000:8.1f} ms")
    print(f"ratio                                        {m_busy / m_idle:8.2f}   (goal <= 1.5)")
    result("slow clients: create, idle (ms)", m_idle * 1000, digits=1)
    result(f"slow clients: create, {stalled} stalled uploads (ms)", m_busy * 1000, digits=1)
    result(f"slow clients: create with {stalled} stalled / idle", m_busy / m_idle, "<= 1.5")


main()
