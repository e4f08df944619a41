"""Small /proc readers the agent needs (host view; the agent runs in the host pid namespace)."""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (all threads), oldest first; [] if it is gone."""
    kids: list[int] = []
    try:
        for tid in os.listdir(PROC / str(pid) / "task"):
            try:
                text = (PROC / str(pid) / "task" / tid / "children").read_text()
            except OSError:
                continue
            kids.extend(int(x) for x in text.split())
    except OSError:
        return []
    return sorted(set(kids), key=_start_time)


def process_tree(root: int, proc: Path = PROC) -> list[int]:
    """``root`` and all its descendants, parents first (from each task's children list)."""
    seen: list[int] = []
    queue = [root]
    while queue:
        pid = queue.pop(0)
        if pid in seen:
            continue
        seen.append(pid)
        try:
            tasks = list((proc / str(pid) / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                queue.extend(int(c) for c in (task / "children").read_text().split())
            except (OSError, ValueError):
                continue
    return seen


def _start_time(pid: int) -> int:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return 1 << 62
    return int(stat.rsplit(")", 1)[1].split()[19])


def state(pid: int) -> str | None:
    """Scheduler state letter (R, S, Z, ...) or None if the pid does not exist."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    """True for a live process; zombies count as gone."""
    return state(pid) not in (None, "Z", "X")


def ns_pids(pid: int) -> list[int]:
    """``NSpid`` of ``pid``: its number in each pid namespace, outermost first."""
    for line in (PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    raise ProcessLookupError(pid)


def ns_inode(pid: int, ns: str) -> str:
    return os.readlink(PROC / str(pid) / "ns" / ns)


def host_pid_in_ns(ns_holder: int, ns_pid: int) -> int | None:
    """Host pid of the process numbered ``ns_pid`` in the pid namespace of ``ns_holder``."""
    target_ns = ns_inode(ns_holder, "pid")
    depth = len(ns_pids(ns_holder))
    for entry in os.listdir(PROC):
        if not entry.isdigit():
            continue
        try:
            nspids = ns_pids(int(entry))
            same = len(nspids) == depth and nspids[-1] == ns_pid
            if same and ns_inode(int(entry), "pid") == target_ns:
                return int(entry)
        except (OSError, ProcessLookupError):
            continue
    return None


def cmdline(pid: int) -> list[str]:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def root_overlay_upper(pid: int) -> Path | None:
    """Host path of the overlay upper dir backing the root of ``pid``'s mount namespace.

    Read from /proc/PID/mountinfo (the mount at "/"): container runtimes mount the
    container root as overlayfs and pass host paths in ``upperdir=``.
    """
    try:
        lines = (PROC / str(pid) / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    upper: Path | None = None  # the last mount on "/" is the one in effect
    for line in lines:
        fields = line.split()
        if len(fields) < 10 or fields[4] != "/":
            continue
        sep = fields.index("-")
        if fields[sep + 1] != "overlay":
            continue
        for opt in fields[sep + 3].split(","):
            if opt.startswith("upperdir="):
                upper = Path(opt.removeprefix("upperdir=").replace("\\040", " "))
    return upper


def resolve_in_root(pid: int, path: str, max_links: int = 40) -> Path:
    """Host path of ``path`` as the process ``pid`` sees it, symlinks resolved inside its root.

    ``/proc/PID/root/var/run/x`` is wrong when the container's /var/run is a symlink to
    ``/run``: the kernel would resolve that absolute link against *our* root. So we walk
    the components ourselves and restart absolute links at the container's root.
    """
    return resolve_under(PROC / str(pid) / "root", path, max_links)


def resolve_under(root: Path, path: str, max_links: int = 40) -> Path:
    """``path`` inside ``root`` (a process's ``/proc/PID/root``), symlinks kept inside it."""
    done: list[str] = []
    todo = [p for p in path.split("/") if p not in ("", ".")]
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = root.joinpath(*done, part)
        try:
            target = os.readlink(candidate)
        except OSError:  # not a symlink (or missing): keep it as is
            done.append(part)
            continue
        links += 1
        if links > max_links:
            raise OSError(f"too many symlinks resolving {path} in {root}")
        if target.startswith("/"):
            done = []
        todo = [p for p in target.split("/") if p not in ("", ".")] + todo
    return root.joinpath(*done)


def host_path(path: Path) -> Path:
    """A host path as reachable from here: directly, or through the host init's root.

    The agent may run in a container (hostPID, own mount namespace); paths that a
    container runtime reports (overlay upper dirs) are host paths.
    """
    try:
        same = os.readlink("/proc/1/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    except OSError:
        same = True
    return path if same else PROC / "1" / "root" / str(path).lstrip("/")


def catches(pid: int, signum: int) -> bool:
    """Has ``pid`` installed a handler for ``signum`` (``SigCgt`` in /proc/PID/status)?

    The restore placeholder traps SIGUSR1 first thing; until it has, a SIGUSR1 would kill
    it (and before its exec, the container init is still the runtime's setup process).
    """
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    except (OSError, ValueError):
        pass
    return False
