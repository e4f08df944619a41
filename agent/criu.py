"""Where CRIU is, which version, and whether this kernel supports it.

``scripts/install-criu.sh`` unpacks CRIU >= 4.2 (with its own glibc) from Debian
sid and writes ``criu.json`` (loader, library path, binary) beside a wrapper
script. The agent execs the loader itself instead of the wrapper, because
inside a container's mount namespace no host path resolves; it reaches the
host files through ``/proc/self/fd/N`` (see :mod:`agent.nsrun`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Before 4.2 CRIU cannot dump a TCP or UDP socket on kernels >= 6.16 ("Can't get 1:16 opt"):
# every HTTP server holds one, so older versions are refused outright.
MIN_VERSION = (4, 2)
INSTALLED = "criu-current"  # install-criu.sh's link to the newest unpacked CRIU
ENV_CRIU = "THAW_CRIU"  # optional override: path to a criu binary or wrapper
SYSTEM_LOADER = "/lib64/ld-linux-x86-64.so.2"
SYSTEM_LIBS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu")


class CriuMissing(RuntimeError):
    """CRIU is absent, too old, or this kernel lacks what it needs."""


@dataclasses.dataclass(frozen=True)
class CriuSpec:
    """How to exec CRIU: ``loader --library-path LIBS binary ARGS`` (loader may be empty)."""

    binary: str
    loader: str = ""
    library_path: tuple[str, ...] = ()

    def argv(self, *args: str) -> list[str]:
        if not self.loader:
            return [self.binary, *args]
        return [self.loader, "--library-path", ":".join(self.library_path), self.binary, *args]

    def with_loader(self) -> CriuSpec:
        """Same binary, run through an explicit loader (needed to exec it by fd)."""
        if self.loader:
            return self
        return CriuSpec(self.binary, SYSTEM_LOADER, SYSTEM_LIBS)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def cache_dir() -> Path:
    return Path(os.environ.get("THAW_CACHE") or Path.home() / ".cache" / "thaw")


def find() -> CriuSpec:
    """Locate CRIU: $THAW_CRIU, the venv's, the cached unpacked build, then ``criu`` on PATH."""
    override = os.environ.get(ENV_CRIU)
    if override:
        return CriuSpec(override)
    candidates = [cache_dir() / INSTALLED / "criu.json"]
    venv_criu = Path(sys.prefix) / "bin" / "criu"
    if venv_criu.is_symlink():
        candidates.insert(0, Path(os.path.realpath(venv_criu)).parent.parent / "criu.json")
    for spec_file in candidates:
        if spec_file.is_file():
            raw = json.loads(spec_file.read_text())
            libs = tuple(raw.get("library_path", ()))
            return CriuSpec(raw["binary"], raw.get("loader", ""), libs)
    on_path = shutil.which("criu")
    if on_path:
        return CriuSpec(on_path)
    raise CriuMissing(
        "CRIU not found: run `make install` (scripts/install-criu.sh fetches CRIU "
        f">= {'.'.join(map(str, MIN_VERSION))} into $THAW_CACHE) or set {ENV_CRIU}"
    )


def version(spec: CriuSpec) -> str:
    out = subprocess.run(spec.argv("--version"), capture_output=True, text=True, timeout=30)
    m = re.search(r"Version:\s*(\S+)", out.stdout)
    if out.returncode != 0 or not m:
        raise CriuMissing(f"`criu --version` failed: {(out.stderr or out.stdout).strip()}")
    return m.group(1)


def parse_version(text: str) -> tuple[int, ...]:
    """``4.2.1`` -> (4, 2, 1); a suffix after the numbers is ignored."""
    parts = []
    for piece in text.split("."):
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def require(check_kernel: bool = True) -> tuple[CriuSpec, str]:
    """Find CRIU and make sure it can work here; raise CriuMissing with the reason otherwise."""
    if os.geteuid() != 0:
        raise CriuMissing("the agent must run as root (CRIU needs CAP_SYS_ADMIN and ptrace)")
    spec = find()
    ver = version(spec)
    if parse_version(ver) < MIN_VERSION:
        raise CriuMissing(
            f"CRIU {ver} is too old: thaw needs >= {'.'.join(map(str, MIN_VERSION))} (older "
            "versions cannot dump TCP/UDP sockets on kernels >= 6.16); run scripts/install-criu.sh"
        )
    if check_kernel:
        out = subprocess.run(spec.argv("check"), capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise CriuMissing(f"`criu check` failed: {(out.stdout + out.stderr).strip()}")
    return spec, ver


class CriuFailed(RuntimeError):
    """A CRIU dump or restore failed; the message carries CRIU's own error lines."""

    def __init__(self, message: str, log_path: Path | None = None) -> None:
        super().__init__(message)
        self.log_path = log_path


def log_errors(log_path: Path, limit: int = 4) -> list[str]:
    """The last few ``Error (...)`` lines of a CRIU log, for a message a person can act on."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    noise = ("RLIMIT_NOFILE",)  # harmless: CRIU cannot raise its own fd limit in a pod
    errors = [
        ln.split(": ", 1)[-1] for ln in lines if "Error (" in ln and not any(n in ln for n in noise)
    ]
    return errors[-limit:]


def call(
    action: str,
    spec: CriuSpec,
    *,
    images_dir: Path,
    work_dir: Path,
    log_file: str,
    opts: dict,
    ns_pid: int | None = None,
    inherit_fds: list[dict] | None = None,
    timeout: float = 900,
    extra: dict | None = None,
    pass_fds: tuple[int, ...] = (),
) -> dict:
    """Run one dump/restore request through :mod:`agent.nsrun`; raise CriuFailed on failure.

    ``pass_fds`` are kept open in the helper (and CRIU under it): a per-pod lock passed
    here stays held while an orphaned helper still runs after its agent died.
    """
    req = {
        "action": action,
        "criu": spec.with_loader().to_dict(),
        "ns_pid": ns_pid,
        "images_dir": str(images_dir),
        "work_dir": str(work_dir),
        "log_file": log_file,
        "opts": opts,
        "inherit_fds": inherit_fds or [],
        **(extra or {}),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "agent.nsrun"],
        input=json.dumps(req),
        capture_output=True,
        text=True,
        timeout=timeout,
        pass_fds=pass_fds,
    )
    log_path = work_dir / log_file
    try:
        reply = json.loads(proc.stdout)
    except ValueError:
        reply = {"ok": False, "error": f"helper exited {proc.returncode}: {proc.stderr[-2000:]}"}
    if not reply.get("ok"):
        error = str(reply.get("error", "unknown error"))
        detail = "; ".join(log_errors(log_path)) or error
        if error.startswith("criu was killed") and error not in detail:
            detail = f"{error}; {detail}"
        kept = keep_log(log_path, action)
        where = f" (log: {kept})" if kept else ""
        raise CriuFailed(f"criu {action} failed: {detail}{where}", kept)
    return reply


LOG_DIR = Path(tempfile.gettempdir()) / "thaw-criu-logs"
KEEP_LOGS = 20


def keep_log(log_path: Path, action: str) -> Path | None:
    """Keep a failed operation's CRIU log (the newest KEEP_LOGS only), for a person to read."""
    if not log_path.is_file():
        return None
    LOG_DIR.mkdir(mode=0o700, exist_ok=True)
    dest = LOG_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{action}.log"
    shutil.move(log_path, dest)
    for old in sorted(LOG_DIR.glob("*.log"), key=lambda p: p.stat().st_mtime)[:-KEEP_LOGS]:
        old.unlink(missing_ok=True)
    return dest
