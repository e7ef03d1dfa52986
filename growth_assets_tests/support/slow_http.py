"""A local HTTP server that answers slowly, for fault injection (never a stand-in for a real
service): it reads each request whole, then sends its answer in steps, each after a pause."""

from __future__ import annotations

import socket
import threading
import time


class SlowAnswer:
    """Answers every request with ``steps``: (seconds to wait, bytes to send then), in order."""

    def __init__(self, steps: list[tuple[float, bytes]], path: str = ""):
        self.steps = steps
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}{path}"
        self.conns: list[socket.socket] = []
        self.answers: list[threading.Thread] = []
        # per request: how many steps went out whole before the client hung up (or all of them)
        self.steps_sent: list[int] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @classmethod
    def trickle(cls, response: bytes, gap: float, path: str = "") -> "SlowAnswer":
        """One byte every ``gap`` seconds: each read returns within a per-read timeout."""
        return cls([(gap, bytes([b])) for b in response], path)

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            t = threading.Thread(target=self._answer, args=(c, len(self.steps_sent)), daemon=True)
            self.steps_sent.append(0)
            self.answers.append(t)
            t.start()

    def _answer(self, c: socket.socket, k: int) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                data += c.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            n = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")), 0)
            while len(rest) < n:
                rest += c.recv(65536)
            for pause, piece in self.steps:
                time.sleep(pause)
                c.sendall(piece)
                self.steps_sent[k] += 1
        except OSError:  # the client hung up: steps_sent[k] says how far the answer got
            c.close()

    def finished(self, timeout: float = 10.0) -> list[int]:
        """``steps_sent`` once every answer has ended (sent whole, or cut off by the client)."""
        for t in self.answers:
            t.join(timeout)
        return list(self.steps_sent)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()

    def __enter__(self) -> "SlowAnswer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
