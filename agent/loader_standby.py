"""A GPU region loader started ahead of the restore that will need it.

A loader spawned when a restore begins (``agent.gpu_regions``) spends its
first 0.1 s starting Python and importing cuda-python, then brings up the CUDA
driver while CRIU restores beside it: measured on H100 nodes, ``cuInit`` plus
the context took 0.25 s on an idle machine and 0.65-0.85 s during a restore,
and the loader's readers wait for it (bench/results/gpu-restore.md). The
agent is long-lived, so it keeps one loader waiting with all of that done:

  * the standby process imports the loader and runs ``cuInit`` at once; with
    ``contexts`` it also retains the primary context of those GPUs (GPU memory
    held while it waits: opt-in);
  * it then blocks on a unix socket for one request, an argv for
    ``agent.gpu_regions.main`` and the file descriptors it refers to, runs it
    and exits. The agent starts the next standby once that loader is gone,
    not during the restore it serves.

A standby that died or was never started costs nothing but the old path:
``spawn`` falls back to a fresh process.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from thaw import fdpass

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 60.0
MODES = ("off", "on", "contexts")  # the agent's --loader-standby
DEFAULT_MODE = "on"
FD_TOKEN = "{fd%d}"  # argv placeholder for the i-th passed descriptor


def _checked(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"loader standby mode {mode!r} is not one of {', '.join(MODES)}")
    return mode


def _argv(args: Sequence[str], fds: Sequence[int]) -> list[str]:
    """``args`` with each ``{fdI}`` replaced by the number of ``fds[I]``."""
    numbers = {FD_TOKEN % i: str(fd) for i, fd in enumerate(fds)}
    return [numbers.get(a, a) for a in args]


class LoaderStandby:
    """One waiting loader process; ``spawn`` hands it a restore's arguments."""

    def __init__(self, contexts: Sequence[str] = ()) -> None:
        self.contexts = list(contexts)  # GPU UUIDs whose context waits up, or ["all"]
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._channel: socket.socket | None = None
        self._closed = False
        self.served = 0  # requests handed to a standby (not to a fresh process)

    @classmethod
    def for_mode(cls, mode: str) -> LoaderStandby:
        """The standby of an agent mode other than "off": "on", or "contexts" (every GPU's)."""
        if _checked(mode) == "off":
            raise ValueError('loader standby mode "off" has no standby')
        return cls(["all"] if mode == "contexts" else [])

    @property
    def pid(self) -> int | None:
        """The waiting standby's pid (None: none is waiting)."""
        with self._lock:
            return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start a standby if none is waiting (returns at once; it warms up on its own)."""
        with self._lock:
            if self._closed or (self._proc is not None and self._proc.poll() is None):
                return
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            argv = [sys.executable, "-m", "agent.loader_standby", "--channel", str(theirs.fileno())]
            if self.contexts:
                argv += ["--contexts", ",".join(self.contexts)]
            try:
                self._proc = subprocess.Popen(
                    argv, cwd=str(REPO_ROOT), stdin=subprocess.DEVNULL,
                    pass_fds=(theirs.fileno(),), start_new_session=True,
                )  # fmt: skip
            except OSError as e:
                ours.close()
                log.warning("could not start a standby GPU region loader: %s", e)
                return
            finally:
                theirs.close()
            self._channel = ours

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> dict:
        """Block until the standby says it is up; its report (``{}`` if it is gone)."""
        with self._lock:
            channel = self._channel
        if channel is None:
            return {}
        channel.settimeout(timeout_s)
        try:
            message, fds = fdpass.recv(channel)
        except (OSError, fdpass.FdPassError):
            return {}
        finally:
            channel.settimeout(None)
        for fd in fds:
            os.close(fd)
        return message

    def take(self, args: Sequence[str], fds: Sequence[int]) -> subprocess.Popen | None:
        """Hand ``args`` (``agent.gpu_regions`` arguments) to the standby; None if none is up."""
        with self._lock:
            proc, channel = self._proc, self._channel
            self._proc = self._channel = None
        if proc is None or channel is None:
            return None
        with channel:
            if proc.poll() is not None:
                return None
            try:
                fdpass.send(channel, {"args": list(args)}, list(fds))
            except (OSError, fdpass.FdPassError) as e:
                log.warning("standby GPU region loader unreachable (%s): starting a fresh one", e)
                with contextlib.suppress(OSError):
                    proc.kill()
                return None
        self.served += 1
        # the next standby warms up once this loader is done, not beside the restore it serves
        threading.Thread(target=self._replace, args=(proc,), daemon=True).start()
        return proc

    def _replace(self, proc: subprocess.Popen) -> None:
        with contextlib.suppress(Exception):
            proc.wait()
        self.start()

    def close(self) -> None:
        """Stop the waiting standby (a loader already handed a restore keeps running)."""
        with self._lock:
            self._closed = True
            proc, channel = self._proc, self._channel
            self._proc = self._channel = None
        if channel is not None:
            channel.close()  # the standby reads EOF and exits
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def spawn(
    args: Sequence[str], fds: Sequence[int] = (), standby: LoaderStandby | None = None
) -> subprocess.Popen:
    """A loader running ``args``: the standby's if one is waiting, else a fresh process.

    ``args`` may name ``fds[i]`` as ``{fdi}``; the fds are the caller's to close.
    """
    proc = standby.take(args, fds) if standby is not None else None
    if proc is not None:
        return proc
    return subprocess.Popen(
        [sys.executable, "-m", "agent.gpu_regions", *_argv(args, fds)],
        cwd=str(REPO_ROOT), stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=tuple(fds),
    )  # fmt: skip


_shared: LoaderStandby | None = None


def shared() -> LoaderStandby | None:
    """The agent's standby, once ``enable`` was called (a long-running agent does)."""
    return _shared


def enable(mode: str = DEFAULT_MODE) -> LoaderStandby | None:
    """Start the agent's standby for ``mode`` (one of MODES; "off": none)."""
    global _shared
    if _checked(mode) != "off" and _shared is None:
        _shared = LoaderStandby.for_mode(mode)
        _shared.start()
    return _shared


def disable() -> None:
    global _shared
    if _shared is not None:
        _shared.close()
        _shared = None


# --- the standby process -------------------------------------------------------------
def _warm(contexts: Sequence[str]) -> dict:
    """Import the loader and bring the driver (and any asked-for contexts) up."""
    import agent.gpu_regions  # noqa: F401  (its imports, paid now)
    import sidecar.kv_cache  # noqa: F401  (the allocations' helpers)
    from agent.cuda_checkpoint import CudaDriver

    try:
        drv = CudaDriver.get()
    except Exception as e:  # no driver: the loader reports it to the worker as before
        return {"ready": True, "cuda": str(e)}
    if not contexts:
        return {"ready": True, "cuda": "initialised"}
    warmed = []
    try:
        for ordinal, gpu in enumerate(drv.gpus()):  # in CUDA ordinal order
            if "all" in contexts or gpu.uuid in contexts:
                drv.retain_primary_context(ordinal)
                warmed.append(gpu.uuid)
    except Exception as e:
        return {"ready": True, "cuda": f"contexts: {e}", "contexts": warmed}
    return {"ready": True, "cuda": "initialised", "contexts": warmed}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="a GPU region loader waiting for its restore")
    p.add_argument("--channel", type=int, required=True, help="inherited unix socket fd")
    p.add_argument("--contexts", default="", help="GPU UUIDs (comma-separated) or 'all'")
    a = p.parse_args(argv)
    # the loader's own handler (CRIU is done) comes with its main; until then, never die of it
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    channel = socket.socket(fileno=a.channel)
    report = _warm([c for c in a.contexts.split(",") if c])
    with contextlib.suppress(OSError):  # a request may be in already, its sender gone
        fdpass.send(channel, report)
    try:
        request, fds = fdpass.recv(channel)
    except (OSError, fdpass.FdPassError):
        return 0  # the agent went away or closed us: nothing to serve
    finally:
        channel.close()
    from agent import gpu_regions

    return gpu_regions.main(_argv([str(x) for x in request.get("args", [])], fds))


if __name__ == "__main__":
    sys.exit(main())
