"""What the benchmark scripts share: calls to the agent over its unix socket, timed from
connect to the answer's last byte, and the order statistics they print."""
import json
import socket
import statistics
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


def median(xs):
    return statistics.median(xs)


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]
