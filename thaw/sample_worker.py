"""Sample inference-like worker that follows thaw's signal-file protocol.

It "warms up" by building ``--state-mb`` MB of seeded pseudo-random bytes in
memory (what model weights are to a real worker), then, with
``--warmup-rounds N``, runs N rounds of a sequential hash chain over that state
(what kernel compilation and graph capture are: CPU time whose result lives in
memory), runs a counter thread (what a serving loop is), and answers queries on
a unix socket in the control dir:

    state   -> {"sha256": <hash of the in-memory state now>, "size": N}
    warmup  -> {"digest": <result of the warm-up chain>, "rounds": N}
    counter -> {"counter": N}
    pid     -> {"pid": os.getpid()}
    file    -> {"file": <content of --write-file, read now>}  (rootfs changes travel)
    held    -> {"pipe": <bytes waiting in its private pipe>, "lock": <path it holds flock on>}

Like an engine, it holds kernel objects across the checkpoint: the listening
socket is bound before the handshake, a pipe has unread data in it, and an
exclusive flock is held on a file next to ``--write-file``.

In checkpoint mode it writes ``ready-for-checkpoint`` once warm and pauses
its counter until the agent answers ``checkpoint-complete`` (or, after a
restore, ``restore-complete``). Tests compute the expected hash themselves
with :func:`expected_sha256`, so a restore that corrupts memory is caught.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import socket
import sys
import threading
import time

from thaw.contract import CONTROL_DIR, ENV_CONTROL_DIR, ENV_MODE, InjectedMode, Signal

SOCKET_NAME = "worker.sock"
READY = Signal.READY_FOR_CHECKPOINT.value
RESUME = (
    Signal.CHECKPOINT_COMPLETE.value,
    Signal.RESTORE_COMPLETE.value,
    Signal.CHECKPOINT_ABANDONED.value,  # the sidecar gave up: serve cold
)
MB = 1 << 20


def make_state(seed: str, size_mb: int) -> bytearray:
    return bytearray(hashlib.shake_256(seed.encode()).digest(size_mb * MB))


def expected_sha256(seed: str, size_mb: int) -> str:
    return hashlib.sha256(make_state(seed, size_mb)).hexdigest()


def warm_up(state: bytes | bytearray, rounds: int) -> str:
    """A sequential chain (no shortcut, no parallelism) over 1 MB slices of the state."""
    digest = b""
    view = memoryview(state)
    slices = max(1, len(state) // MB)
    for i in range(rounds):
        start = (i % slices) * MB
        digest = hashlib.sha256(digest + view[start : start + MB]).digest()
    return digest.hex()


class Worker:
    def __init__(
        self, control: str, seed: str, size_mb: int, write_file: str = "", rounds: int = 0
    ) -> None:
        self.control = control
        self.write_file = write_file
        if write_file:  # a file written into the container's own filesystem while warming up
            os.makedirs(os.path.dirname(write_file), exist_ok=True)
            with open(write_file, "w") as f:
                f.write(f"written by {seed}\n")
        self.state = make_state(seed, size_mb)
        self.rounds = rounds
        self.warmup_digest = warm_up(self.state, rounds)
        self.counter = 0
        self.running = threading.Event()
        self.running.set()

    def count(self) -> None:
        while True:
            self.running.wait()
            self.counter += 1
            time.sleep(0.01)

    def answer(self, query: str) -> dict:
        if query == "state":
            return {"sha256": hashlib.sha256(self.state).hexdigest(), "size": len(self.state)}
        if query == "warmup":
            return {"digest": self.warmup_digest, "rounds": self.rounds}
        if query == "counter":
            return {"counter": self.counter}
        if query == "pid":
            return {"pid": os.getpid()}
        if query == "held":
            return self.held()
        if query == "file":
            try:
                with open(self.write_file) as f:
                    return {"file": f.read()}
            except OSError as e:
                return {"file": None, "error": str(e)}
        return {"error": f"unknown query {query!r}"}

    def hold(self) -> None:
        self.pipe_r, pipe_w = os.pipe()
        os.write(pipe_w, b"in flight")
        self.pipe_w = pipe_w
        self.lock_path = ""
        if self.write_file:
            self.lock_path = self.write_file + ".lock"
            self.lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX)

    def held(self) -> dict:
        data = os.read(self.pipe_r, 64)
        os.write(self.pipe_w, data)  # put it back for the next query
        return {"pipe": data.decode(), "lock": self.lock_path}

    def listen(self, path: str) -> socket.socket:
        if os.path.exists(path):
            os.unlink(path)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen(16)
        return srv

    def serve(self, srv: socket.socket) -> None:
        while True:
            conn, _ = srv.accept()
            with conn:
                query = conn.recv(256).decode().strip()
                conn.sendall(json.dumps(self.answer(query)).encode() + b"\n")

    def checkpoint_handshake(self) -> None:
        """Pause, ask the agent for a dump, and resume once it answers."""
        self.running.clear()
        with open(os.path.join(self.control, READY), "w") as f:
            f.write(json.dumps({"pid": os.getpid()}))
        while not any(os.path.exists(os.path.join(self.control, s)) for s in RESUME):
            time.sleep(0.02)
        self.running.set()
        print("worker: resumed after snapshot", flush=True)


def query(control_dir: str, what: str, timeout: float = 10.0) -> dict:
    """Client side (used by tests from the host, through the control dir)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(os.path.join(control_dir, SOCKET_NAME))
                s.sendall(what.encode())
                return json.loads(s.makefile().readline())
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--control", default=os.environ.get(ENV_CONTROL_DIR, CONTROL_DIR))
    p.add_argument("--seed", default="thaw")
    p.add_argument("--state-mb", type=int, default=64)
    p.add_argument("--write-file", default="", help="file to create in the container's rootfs")
    p.add_argument("--warmup-rounds", type=int, default=0, help="simulated compile work")
    args = p.parse_args()
    w = Worker(args.control, args.seed, args.state_mb, args.write_file, args.warmup_rounds)
    print(f"worker: warm, {args.state_mb} MB state, pid {os.getpid()}", flush=True)
    threading.Thread(target=w.count, daemon=True).start()
    w.hold()
    srv = w.listen(os.path.join(args.control, SOCKET_NAME))
    if os.environ.get(ENV_MODE) == InjectedMode.CHECKPOINT:
        w.checkpoint_handshake()
    w.serve(srv)


if __name__ == "__main__":
    sys.exit(main())
