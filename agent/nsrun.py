"""Run one CRIU RPC request (dump or restore) from inside a container's namespaces.

Why a separate process: CRIU must see the worker the way the container sees
it. Dumping a tree whose pid namespace differs from CRIU's own requires the
tree's root to be that namespace's init, and our worker is deliberately not
PID 1 (see ``thaw.launch``); restoring into an existing pid namespace
(the restore placeholder's) is not something CRIU can do from outside
(``--join-ns`` covers ipc/uts/net only). So this helper ``setns()``-es into
the target's ipc, uts, net, cgroup, pid and mount namespaces and moves
into its cgroups, forks (a pid namespace only applies to children) and, from
there, starts ``criu swrk`` and drives it through pycriu. CRIU then sees the
worker's namespaces as its own and dumps or restores plain processes, with
the worker's own pid numbers, under the container's root.

Host files (CRIU's loader, libraries, binary, the image dir, a log dir, fds
to inherit) are opened *before* entering the mount namespace and reached
afterwards as ``/proc/self/fd/N``; the container's /proc belongs to its pid
namespace, so that also holds for CRIU's own ``/proc/<client>/fd/N``
look-ups of ``images_dir_fd``. A multithreaded process cannot join a mount
namespace, which is another reason this is a fresh single-threaded process
(``python -m agent.nsrun``): JSON request on stdin, JSON reply on stdout.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import tarfile
import traceback

import pycriu.rpc_pb2 as rpc
from pycriu import CRIUException, CRIUExceptionExternal
from pycriu import criu as CriuClient

from agent import rootfs, shm

NAMESPACES = ("ipc", "uts", "net", "cgroup", "pid", "mnt")  # mnt last: it changes our root
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns({what}): {os.strerror(err)}")


def _open_keep(path: str, flags: int) -> int:
    fd = os.open(path, flags)
    os.set_inheritable(fd, True)
    return fd


def _host_view() -> tuple[str, str]:
    """(/proc entry, root prefix) of the host's view: its init's, when we may look at it.

    The agent runs with hostPID but maybe in its own mount and cgroup namespaces; where
    PID 1 is off limits (or we are on the host already), our own view is the host's.
    """
    try:
        if os.readlink("/proc/1/ns/mnt") != os.readlink("/proc/self/ns/mnt"):
            return "/proc/1", "/proc/1/root"
        return "/proc/1", "/"
    except OSError:
        return "/proc/self", "/"


def _cgroup_mounts(proc: str) -> dict[str, tuple[str, str]]:
    """Map "" (cgroup v2) and each v1 controller to (mount point, mount root)."""
    out: dict[str, tuple[str, str]] = {}
    with open(f"{proc}/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, opts = fields[sep + 1], fields[sep + 3].split(",")
            if fstype == "cgroup2":
                out.setdefault("", (fields[4], fields[3]))
            elif fstype == "cgroup":
                for o in opts:
                    out.setdefault(o.removeprefix("name="), (fields[4], fields[3]))
    return out


def join_cgroups(target: int) -> list[str]:
    """Move this process into ``target``'s cgroups (best effort; returns warnings).

    Restored tasks inherit them, so the worker is accounted to (and limited by) its pod.
    Paths in /proc/PID/cgroup are relative to the reader's cgroup namespace, so we read
    them from the host's cgroup namespace and write through the host's root.
    """
    warnings: list[str] = []
    proc, root = _host_view()
    if os.readlink(f"{proc}/ns/cgroup") != os.readlink("/proc/self/ns/cgroup"):
        fd = os.open(f"{proc}/ns/cgroup", os.O_RDONLY)
        try:
            _setns(fd, "cgroup (host)")
        finally:
            os.close(fd)
    mounts = _cgroup_mounts(proc)
    with open(f"/proc/{target}/cgroup") as f:
        lines = f.read().splitlines()
    for line in lines:
        _hid, ctrls, path = line.split(":", 2)
        key = ctrls.split(",")[0].removeprefix("name=") if ctrls else ""
        if key not in mounts:
            continue
        mountpoint, mount_root = mounts[key]
        rel = os.path.relpath(path, mount_root) if mount_root != "/" else path.lstrip("/")
        procs = os.path.join(root, mountpoint.lstrip("/"), rel, "cgroup.procs")
        try:
            with open(procs, "w") as p:
                p.write(str(os.getpid()))
        except OSError as e:
            warnings.append(f"cgroup {ctrls or 'v2'}:{path}: {e}")
    return warnings


def _criu_opts(req: dict, images_fd: int, work_fd: int, inherit: list[tuple[str, int]]):
    opts = rpc.criu_opts()
    opts.images_dir_fd = images_fd
    opts.work_dir_fd = work_fd
    opts.log_file = req.get("log_file", "criu.log")
    opts.log_level = 4
    for name, value in req.get("opts", {}).items():
        field = getattr(opts, name)
        if isinstance(value, list):
            field.extend(value)
        else:
            setattr(opts, name, value)
    for key, fd in inherit:
        opts.inherit_fd.add(key=key, fd=fd)
    return opts


def _spawn_swrk(argv: list[str], devnull: int) -> tuple[int, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.set_inheritable(True)
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.execv(argv[0], [*argv, "swrk", str(theirs.fileno())])
        finally:
            os._exit(127)
    theirs.close()
    return pid, ours


def _recv(sock: socket.socket) -> rpc.criu_resp:
    size = len(sock.recv(1, socket.MSG_TRUNC | socket.MSG_PEEK))
    resp = rpc.criu_resp()
    resp.ParseFromString(sock.recv(size))
    return resp


def _dump_notified(sock: socket.socket, opts: rpc.criu_opts, on_script) -> None:
    """A dump that answers CRIU's action-script notifications (pycriu's client cannot).

    ``on_script(name)`` runs while CRIU waits; an exception from it fails the dump,
    which CRIU then undoes (the tree resumes).
    """
    req = rpc.criu_req(type=rpc.DUMP)
    req.opts.MergeFrom(opts)
    req.opts.notify_scripts = True
    sock.send(req.SerializeToString())
    while True:
        resp = _recv(sock)
        if resp.type != rpc.NOTIFY:
            break
        try:
            on_script(resp.notify.script)
        except BaseException:
            sock.send(rpc.criu_req(type=rpc.NOTIFY, notify_success=False).SerializeToString())
            raise
        sock.send(rpc.criu_req(type=rpc.NOTIFY, notify_success=True).SerializeToString())
    if not resp.success:
        raise CRIUExceptionExternal(req.type, resp.type, resp.cr_errno)


def run_request(req: dict, fds: dict) -> dict:
    """In the final namespaces: start criu swrk and send the request through pycriu."""
    if req["action"] == "untar":
        return {"ok": True, "entries": rootfs.apply(fds["tar"], "/", req.get("mounts", ()))}
    swrk, sock = _spawn_swrk(fds["argv"], fds["devnull"])
    client = CriuClient()
    client.use_fd(sock.fileno())
    client.opts = _criu_opts(req, fds["images"], fds["work"], fds["inherit"])
    reply: dict = {"ok": False, "pid": None, "ns_pid": os.getpid()}
    try:
        if req["action"] == "dump" and "shm_out" in fds:

            def post_dump(script: str) -> None:
                if script == "post-dump":  # the tree is still frozen
                    reply["shm_files"] = shm.capture(fds["shm_out"])

            _dump_notified(sock, client.opts, post_dump)
        elif req["action"] == "dump":
            client.dump()
        elif req["action"] == "restore":
            if "shm_tar" in fds:
                reply["shm_files"] = shm.apply(fds["shm_tar"])
            reply["pid"] = client.restore().pid
        else:
            raise ValueError(f"unknown action {req['action']!r}")
        reply["ok"] = True
    except CRIUException as e:
        reply["error"] = str(e)
        reply["errno"] = getattr(e, "errno", 0)
    except (OSError, shm.ShmError, tarfile.TarError) as e:
        reply["error"] = f"/dev/shm: {e}"
    finally:
        sock.close()
        _, status = os.waitpid(swrk, 0)
    if not reply["ok"] and os.WIFSIGNALED(
        status
    ):  # pycriu only sees a closed socket; say what really happened
        sig = signal.Signals(os.WTERMSIG(status)).name
        reply["ok"] = False
        reply["error"] = f"criu was killed by {sig} during the {req['action']}"
    return reply


def prepare(req: dict) -> dict:
    """Open everything host-side that CRIU needs, as inheritable fds."""
    if req["action"] == "untar":
        return {"tar": os.open(req["tar"], os.O_RDONLY)}
    spec = req["criu"]
    rd, rdir = os.O_RDONLY, os.O_RDONLY | os.O_DIRECTORY
    loader = _open_keep(spec["loader"], rd)
    libs = [_open_keep(p, rdir) for p in spec["library_path"]]
    binary = _open_keep(spec["binary"], rd)
    argv = [
        f"/proc/self/fd/{loader}",
        "--library-path",
        ":".join(f"/proc/self/fd/{d}" for d in libs),
        f"/proc/self/fd/{binary}",
    ]
    inherit = []
    for item in req.get("inherit_fds", []):
        flags = os.O_WRONLY if item.get("mode", "w") == "w" else os.O_RDONLY
        inherit.append((item["key"], _open_keep(item["path"], flags | os.O_NONBLOCK)))
    extra = {}
    if req.get("shm_out"):
        extra["shm_out"] = _open_keep(req["shm_out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    if req.get("shm_tar"):
        extra["shm_tar"] = _open_keep(req["shm_tar"], os.O_RDONLY)
    return {
        **extra,
        "argv": argv,
        "images": _open_keep(req["images_dir"], rdir),
        "work": _open_keep(req["work_dir"], rdir),
        "devnull": _open_keep("/dev/null", os.O_RDWR),
        "inherit": inherit,
    }


def enter(target: int, namespaces: tuple[str, ...] = NAMESPACES) -> list[str]:
    """Join ``target``'s cgroups, namespaces (pid applies to our children) and root."""
    warnings = join_cgroups(target) if "cgroup" in namespaces else []
    ns_fds = {ns: os.open(f"/proc/{target}/ns/{ns}", os.O_RDONLY) for ns in namespaces}
    root_fd = os.open(f"/proc/{target}/root", os.O_RDONLY | os.O_DIRECTORY)
    for ns in namespaces:
        if os.readlink(f"/proc/{target}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"):
            _setns(ns_fds[ns], ns)
        os.close(ns_fds[ns])
    # The namespace's root mount is the container root under runc (pivot_root), but a
    # chroot-style runtime differs: take the target's own root either way.
    os.fchdir(root_fd)
    os.chroot(".")
    os.close(root_fd)
    return warnings


def main() -> int:
    req = json.load(sys.stdin)
    out = sys.stdout
    try:
        fds = prepare(req)
        namespaces = ("mnt",) if req["action"] == "untar" else NAMESPACES
        warnings = enter(req["ns_pid"], namespaces) if req.get("ns_pid") else []
        child = os.fork()
        if child == 0:  # first process in the target pid namespace
            code = 0
            try:
                reply = run_request(req, fds)
                reply["warnings"] = warnings
                out.write(json.dumps(reply))
                out.flush()
            except BaseException:
                out.write(json.dumps({"ok": False, "error": traceback.format_exc(limit=3)}))
                out.flush()
                code = 1
            os._exit(code)
        _, status = os.waitpid(child, 0)
        return os.waitstatus_to_exitcode(status)
    except Exception as e:
        out.write(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
