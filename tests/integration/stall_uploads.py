#!/usr/bin/env python3
"""Stalled uploads: N connections to the agent's unix socket, each a POST /sandboxes/import
that announces a whole archive, sends its first bytes and then one more byte every 5 s, as a
client on a dying link does (each read of the agent's makes progress within its 30 s read
timeout). Prints "ready" once every request went out, then a line for each connection the agent
answers or closes. Holds the connections until stdin closes.

    stall_uploads.py SOCK ARCHIVE ID_PREFIX N
"""
import os
import select
import socket
import sys


def main():
    sock_path, archive, prefix, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with open(archive, "rb") as f:
        data = f.read()
    head, sent = data[:64], 64
    size = os.path.getsize(archive)
    conns = []
    for i in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock_path)
        s.sendall(
            (f"POST /sandboxes/import?id={prefix}{i} HTTP/1.1\r\nHost: localhost\r\n"
             f"Content-Type: application/vnd.wrenn.sandbox\r\nContent-Length: {size}\r\n\r\n"
             ).encode() + head)
        conns.append(s)
    print("ready", flush=True)
    # Until stdin closes: whatever the agent answers early (a refusal) is reported.
    answered = set()
    while True:
        open_conns = [s for s in conns if s not in answered]
        ready, _, _ = select.select([sys.stdin] + open_conns, [], [], 5)
        if sys.stdin in ready and not sys.stdin.readline():
            break
        if not ready and sent < len(data) - 1:
            for s in open_conns:
                try:
                    s.sendall(data[sent:sent + 1])
                except OSError:
                    pass
            sent += 1
        for s in ready:
            if s is sys.stdin or s in answered:
                continue
            data = s.recv(4096)
            answered.add(s)
            line = data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "closed"
            print(f"{conns.index(s)} {line}", flush=True)


if __name__ == "__main__":
    main()
