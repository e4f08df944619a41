"""``thaw agent doctor``: prove on this node that the agent can do its job, by doing it.

Checks, in order (once one fails, those after it are skipped):

  criu-version  CRIU is found, runs, and is new enough (``agent.criu.require``)
  criu-check    ``criu check``: the kernel has what CRIU needs
  dump-tcp, dump-udp, dump-unix
                a throw-away server (:mod:`agent.socket_probe`) in a sandbox box of its
                own, holding a TCP listener (and an established connection), a UDP
                socket and a unix listener, is
                checkpointed by the agent's own code with the agent's options
                (``agent.checkpoint.checkpoint``) and must still answer afterwards. One
                dump holds all three; only when it fails is each kind dumped alone, so
                the failing one is named
  restore       the snapshot is restored into a second box (another network namespace)
                by the agent's restore (``agent.restore.restore``), and every listener
                must answer there

A version and ``criu check`` are not enough: CRIU 4.1 passes both and still
cannot dump a TCP socket on kernels >= 6.16. The agent runs the socket checks
once at start (:func:`self_test`) and refuses checkpoints and restores if they fail.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent import criu, procfs, socket_probe
from agent.checkpoint import CheckpointError, checkpoint
from agent.restore import RestoreError, restore
from agent.sandbox import Box
from agent.store import Store
from thaw import launch
from thaw.contract import CONTROL_DIR

CHECKS = ("criu-version", "criu-check", "dump-tcp", "dump-udp", "dump-unix", "restore")
PROBE_TIMEOUT_S = 20.0
ANSWER_TIMEOUT_S = 5.0
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str  # what was found, or why it failed: one line

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Report:
    checks: list[Check]
    criu_version: str = ""
    spec: criu.CriuSpec | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def reason(self) -> str:
        """The first failure, ``name: detail`` ("" when every check passed)."""
        return next((f"{c.name}: {c.detail}" for c in self.checks if not c.ok), "")

    def to_dict(self) -> dict:
        spec = self.spec.to_dict() if self.spec else {}
        out = {
            "ok": self.ok,
            "criu": self.criu_version,
            "binary": spec.get("binary", ""),
            "loader": spec.get("loader", ""),
            "checks": [c.to_dict() for c in self.checks],
            "seconds": round(self.seconds, 3),
        }
        if not self.ok:
            out["reason"] = self.reason
        return out


def one_line(error: BaseException | str) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())


def _skipped(names: tuple[str, ...], why: str) -> list[Check]:
    return [Check(n, False, f"skipped: {why}") for n in names]


def run(version_only: bool = False) -> Report:
    """Every check of the module doc (``version_only``: the first one alone, which is what
    an image build can run)."""
    t0 = time.monotonic()
    report = Report([])
    try:
        spec, version = criu.require(check_kernel=False)
    except (criu.CriuMissing, OSError, ValueError) as e:
        why = one_line(e) if isinstance(e, criu.CriuMissing) else f"cannot run CRIU: {one_line(e)}"
        report.checks = [Check("criu-version", False, why)]
        report.checks += _skipped(CHECKS[1:], "no usable CRIU") if not version_only else []
        report.seconds = time.monotonic() - t0
        return report
    report.spec, report.criu_version = spec, version
    report.checks.append(Check("criu-version", True, f"{version} ({spec.binary})"))
    if not version_only:
        try:
            criu.require(check_kernel=True)
        except (criu.CriuMissing, OSError) as e:
            report.checks.append(Check("criu-check", False, one_line(e)))
            report.checks += _skipped(CHECKS[2:], "criu check failed")
        else:
            report.checks.append(Check("criu-check", True, "criu check passed"))
            report.checks += socket_checks(spec, version)
    report.seconds = time.monotonic() - t0
    return report


# --- the socket checks -------------------------------------------------------------------


def socket_checks(spec: criu.CriuSpec, version: str) -> list[Check]:
    """dump-tcp, dump-udp, dump-unix and restore, on real processes in sandbox boxes."""
    try:
        work = Path(tempfile.mkdtemp(prefix="thaw-doctor-"))
    except OSError as e:
        return [Check(n, False, f"no work dir: {one_line(e)}") for n in CHECKS[2:]]
    try:
        return _socket_checks(work, spec, version)
    except Exception as e:  # a self-test that breaks must say so, not take the agent down
        return [Check(n, False, f"self-test error: {one_line(e)}") for n in CHECKS[2:]]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _socket_checks(work: Path, spec: criu.CriuSpec, version: str) -> list[Check]:
    store = Store(work / "store")
    kinds = socket_probe.KINDS
    dump_names = tuple(f"dump-{k}" for k in kinds)
    with contextlib.ExitStack() as boxes:
        result, error = _dump(work, store, boxes, kinds, "all", spec, version)
        if error:
            checks = [_dump_alone(work, store, k, spec, version) for k in kinds]
            if all(c.ok for c in checks):  # each alone works, together they do not
                checks = [Check(c.name, False, error) for c in checks]
            return [*checks, *_skipped(("restore",), "no snapshot to restore")]
        checks = [Check(n, True, "dumped, the source still answers") for n in dump_names]
        try:
            dst = boxes.enter_context(_box(work / "restored", ["sleep", "infinity"]))
            t = time.monotonic()
            restore(result.path, into=dst.pid, steps=[], spec=spec, criu_version=version)
            took = time.monotonic() - t
        except (RestoreError, OSError, RuntimeError, TimeoutError) as e:
            return [*checks, Check("restore", False, one_line(e))]
        for kind in kinds:
            problem = ask(dst, work / "restored", kind)
            if problem:
                return [*checks, Check("restore", False, f"after the restore, {problem}")]
        detail = f"{', '.join(kinds)} answer in another network namespace ({took:.2f}s)"
        return [*checks, Check("restore", True, detail)]


def _dump_alone(work: Path, store: Store, kind: str, spec: criu.CriuSpec, version: str) -> Check:
    with contextlib.ExitStack() as boxes:
        _, error = _dump(work, store, boxes, (kind,), kind, spec, version)
    return Check(f"dump-{kind}", not error, error or "dumped alone (not together)")


def _dump(
    work: Path,
    store: Store,
    boxes: contextlib.ExitStack,
    kinds: tuple[str, ...],
    label: str,
    spec: criu.CriuSpec,
    version: str,
):
    """Start a probe holding ``kinds`` and checkpoint it: (result, "") or (None, why not)."""
    control = work / f"src-{label}"
    argv = [sys.executable, "-m", "agent.socket_probe", CONTROL_DIR, *kinds]
    try:
        box = boxes.enter_context(_box(control, launch.checkpoint_wrapper(argv)))
        pid = _probe_pid(box, control)
    except (OSError, RuntimeError, TimeoutError) as e:
        return None, f"cannot start the probe: {one_line(e)}"
    try:
        key = f"doctor-{label}"
        result = checkpoint(pid, store, key=key, steps=[], spec=spec, criu_version=version)
    except (CheckpointError, OSError) as e:
        return None, one_line(e)
    for kind in kinds:
        problem = ask(box, control, kind)
        if problem:
            return None, f"the dump left the source broken: {problem}"
    return result, ""


def _box(control: Path, argv: list[str]) -> Box:
    # A bound root: the agent may itself run in a container whose / is an overlay.
    name = f"doctor-{control.name}"
    return Box(argv, control, name=name, die_with_parent=True, bind_root=True)


def _probe_pid(box: Box, control: Path) -> int:
    """The probe (the wrapper's one child), once it has bound its sockets."""
    ready = control / socket_probe.READY_NAME
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    while not ready.exists():
        if not box.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the probe did not start: {one_line(box.log()[-500:] or '?')}")
        time.sleep(0.01)
    kids = [k for k in procfs.children_of(box.pid) if procfs.alive(k)]
    if len(kids) != 1:
        raise RuntimeError(f"expected the probe as the box init's only child, found {kids}")
    return kids[0]


# --- talking to a probe ------------------------------------------------------------------


def ask(box: Box, control: Path, kind: str) -> str:
    """ "" when the probe in ``box`` answers on its ``kind`` socket, else what went wrong."""
    try:
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: object = str(control / socket_probe.UNIX_NAME)
        else:
            stype = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
            sock = in_netns(box.pid, lambda: socket.socket(socket.AF_INET, stype))
            port = socket_probe.TCP_PORT if kind == "tcp" else socket_probe.UDP_PORT
            address = ("127.0.0.1", port)
        with sock:
            sock.settimeout(ANSWER_TIMEOUT_S)
            if kind == "udp":
                sock.sendto(b"?", address)
                got = sock.recv(64)
            else:
                sock.connect(address)
                got = sock.recv(64)
    except OSError as e:
        return f"the {kind} socket did not answer: {one_line(e)}"
    if got != socket_probe.answer(kind):
        return f"the {kind} socket answered {got!r}"
    return ""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(net): {os.strerror(err)}")


def in_netns(pid: int, make: Callable[[], socket.socket]) -> socket.socket:
    """``make()`` run in ``pid``'s network namespace: the socket it returns stays there.

    A network namespace belongs to a thread, so a short-lived thread enters it and
    the caller's own threads never leave theirs.
    """
    out: dict[str, object] = {}

    def enter_and_make() -> None:
        try:
            target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            out["sock"] = make()
        except OSError as e:
            out["error"] = e

    thread = threading.Thread(target=enter_and_make, name="doctor-netns", daemon=True)
    thread.start()
    thread.join(ANSWER_TIMEOUT_S)
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    if "sock" not in out:
        raise TimeoutError(f"entering the network namespace of {pid} took over {ANSWER_TIMEOUT_S}s")
    return out["sock"]  # type: ignore[return-value]


# --- the agent's self-test ---------------------------------------------------------------

_passed: set[tuple[criu.CriuSpec, str]] = set()
_self_test_lock = threading.Lock()


def self_test(spec: criu.CriuSpec, version: str) -> str:
    """The socket checks for the agent: "" when they pass, else the first failure.

    A pass is remembered for the life of the process (the kernel and CRIU do not change
    under it); a failure is not, so a later agent in the same process tries again.
    """
    with _self_test_lock:
        if (spec, version) in _passed:
            return ""
        report = Report(socket_checks(spec, version))
        if report.ok:
            _passed.add((spec, version))
        return report.reason
