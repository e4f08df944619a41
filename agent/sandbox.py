"""A minimal container made of real Linux namespaces, for ``--local`` mode, the demo and tests.

Each box gets new pid, mount, ipc, uts and net namespaces, an overlay root over
the host's ``/`` (writable upper dir on a host-visible tmpfs, as containerd's
overlay snapshotter keeps it), a private /proc, and the control dir
bind-mounted at :data:`thaw.contract.CONTROL_DIR`. Its stdio are pipes drained
by the host, like a runtime shim's. That is what the agent meets in a
Kubernetes pod, minus the image: real namespaces, so the agent's
``setns``/CRIU code paths are the ones used in a cluster. With ``network=True``
the box also gets a pod-like IP on a veth pair (:mod:`agent.sandbox_net`),
set up before its command starts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent import sandbox_init, sandbox_net
from agent.procfs import children_of
from agent.sandbox_net import BoxNet
from thaw.contract import CONTROL_DIR, ENV_CONTROL_DIR

UNSHARE = ("unshare", "--pid", "--fork", "--mount", "--ipc", "--uts", "--net", "--kill-child")
# SIGKILL to unshare when the thread that started it dies; --kill-child takes the box along.
DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL", "--")


_PROJECT = str(Path(__file__).resolve().parent.parent)
_MASKED = ("/tmp", "/run")  # fresh tmpfs in every box, as in a container


def hidden_in_box(path: str) -> str:
    """``path`` (resolved) if the box's root would not show it, else "".

    The box's root is an overlay of the host's root filesystem with its own
    /tmp and /run, so a venv or checkout under /tmp, or on another mount, would
    be missing inside: such paths are bind-mounted in at the same place.
    """
    real = os.path.realpath(path)
    masked = any(real == m or real.startswith(m + "/") for m in _MASKED)
    other_fs = os.stat(real).st_dev != os.stat("/").st_dev
    return real if masked or other_fs else ""


class Box:
    """One running "container"; ``pid`` is its PID 1 as seen from the host."""

    def __init__(
        self,
        argv: Sequence[str],
        control: Path,
        *,
        name: str = "box",
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        network: bool = False,
        die_with_parent: bool = False,
        bind_root: bool = False,
    ) -> None:
        """``die_with_parent``: the box is killed when the calling thread ends, even by
        SIGKILL (a throw-away box must not outlive its creator). ``bind_root``: the box
        sees the host's / itself, writable, instead of an overlay (no rootfs diff)."""
        self.name = name
        self.net: BoxNet | None = None
        self.control = Path(control)
        self.control.mkdir(parents=True, exist_ok=True)
        self.base = Path(tempfile.mkdtemp(prefix=f"thaw-box-{name}-"))
        sandbox_init.mount("tmpfs", str(self.base), "tmpfs", 0, "mode=700")
        for d in ("upper", "work", "merged"):
            (self.base / d).mkdir()
        self._own_log = log is None
        self.log_path = log or self.base.with_suffix(".log")
        box_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), ENV_CONTROL_DIR: CONTROL_DIR}
        box_env.update(env or {})
        # CONTROL_DIR may cross a symlink (/var/run -> /run); the lower layer is the host's /,
        # so the host resolves it the same way the box would.
        control_in_box = os.path.realpath(CONTROL_DIR)
        cmd = [
            *(DIE_WITH_PARENT if die_with_parent else ()),
            *UNSHARE,
            sys.executable,
            "-m",
            "agent.sandbox_init",
            str(self.base),
            str(self.control.resolve()),
            control_in_box,
            name,
            "--",
            *argv,
        ]
        binds = ":".join(hidden_in_box(p) for p in (sys.prefix, _PROJECT) if hidden_in_box(p))
        box_env.update({"PYTHONPATH": _PROJECT, sandbox_init.BINDS_ENV: binds})
        if bind_root:
            box_env[sandbox_init.ROOT_MODE_ENV] = "bind"
        net_wait, net_go = os.pipe() if network else (-1, -1)
        if network:
            box_env[sandbox_init.NET_FD_ENV] = str(net_wait)
        read_end, write_end = os.pipe()
        try:
            self._unshare = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=write_end,
                stderr=write_end,
                env=box_env,
                start_new_session=True,
                pass_fds=(net_wait,) if network else (),
            )
        except OSError:
            for fd in (read_end, write_end, net_wait, net_go):
                if fd >= 0:
                    os.close(fd)
            self._remove_base()
            raise
        os.close(write_end)
        if network:
            os.close(net_wait)  # the box holds its own copy
        self._drain = threading.Thread(target=self._copy_log, args=(read_end,), daemon=True)
        self._drain.start()
        self.pid = -1
        try:
            self.pid = self._wait_init()
            if network:
                self.net = sandbox_net.attach(self.pid)
                os.write(net_go, b"1")
        except BaseException:
            self.stop()
            raise
        finally:
            if network:
                os.close(net_go)

    def _copy_log(self, fd: int) -> None:
        with open(fd, "rb", buffering=0) as src, open(self.log_path, "ab", buffering=0) as dst:
            while chunk := src.read(65536):
                dst.write(chunk)

    def _wait_init(self, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kids = children_of(self._unshare.pid)
            if kids:
                return kids[0]
            if self._unshare.poll() is not None:
                raise RuntimeError(f"box {self.name} exited at start: {self.log()}")
            time.sleep(0.005)
        raise TimeoutError(f"box {self.name}: no init process after {timeout}s")

    @property
    def upper(self) -> Path:
        return self.base / "upper"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self._unshare.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        return self._unshare.wait(timeout)

    def stop(self) -> None:
        """Kill everything in the box (its PID 1 dying takes the pid namespace with it)."""
        if self.pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._unshare.wait(10)
        if self._unshare.poll() is None:
            self._unshare.kill()
            self._unshare.wait()
        self._drain.join(5)
        if self.net is not None:
            sandbox_net.detach(self.net)
        self._remove_base()

    def _remove_base(self) -> None:
        # Lazy: the dying pid namespace may still pin the overlay for a moment; the tmpfs
        # is freed when the last reference goes.
        sandbox_init.unmount_lazy(str(self.base))
        shutil.rmtree(self.base, ignore_errors=True)
        if self._own_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> Box:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
