"""GPU state of a container's process tree, through the CUDA driver's checkpoint API.

CRIU cannot save device memory, so before a dump every CUDA process of the
tree is *locked* (its CUDA calls block, in-flight work drains) and
*checkpointed* (the driver copies device memory into the process's own host
memory and drops its GPU handles). CRIU then sees an ordinary process. After
CRIU restores it, ``restore`` copies the memory back to a GPU and ``unlock``
lets the process run again. A source that must keep serving after a dump is
restored and unlocked in place.

The driver is initialised once per long-lived agent (``CudaDriver.get()``),
so a checkpoint pays no per-call attach cost. Every driver error is reported
by its CUDA name (``CUDA_ERROR_...``), never a bare number.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from agent.procfs import process_tree
from thaw.contract import GpuInfo, format_gpu_uuid

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT_S = 30.0
_PROC = Path("/proc")


class CudaCheckpointError(RuntimeError):
    """A CUDA checkpoint call failed; ``name`` is the driver's error name."""

    def __init__(self, call: str, name: str, pid: int | None = None, detail: str = "") -> None:
        self.call, self.name, self.pid = call, name, pid
        where = f" (pid {pid})" if pid is not None else ""
        super().__init__(f"{call}{where} failed: {name}{': ' + detail if detail else ''}")


class CudaUnavailable(CudaCheckpointError):
    """No usable CUDA driver on this machine (no GPU, no libcuda, cuInit failed)."""


class GpuIncompatible(ValueError):
    """The node's GPUs or driver cannot host a snapshot; the message says why."""


class ProcessState(enum.StrEnum):
    """``CUprocessState`` without the prefix, for logs and manifests."""

    RUNNING = "running"
    LOCKED = "locked"
    CHECKPOINTED = "checkpointed"
    FAILED = "failed"
    CHECKPOINTING = "checkpointing"
    RESTORING = "restoring"


def _driver_module() -> Any:
    from cuda.bindings import driver

    return driver


class CudaDriver:
    """The CUDA driver, initialised once; thread-safe for the agent's workers."""

    _instance: CudaDriver | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        try:
            self._d = _driver_module()
            (err,) = self._d.cuInit(0)
        except Exception as e:  # no libcuda.so: DynamicLibNotFoundError, ImportError, OSError
            raise CudaUnavailable("cuInit", type(e).__name__, detail=str(e)) from None
        if err != self._d.CUresult.CUDA_SUCCESS:
            raise CudaUnavailable("cuInit", self.error_name(err))
        self._lock = threading.Lock()

    @classmethod
    def get(cls) -> CudaDriver:
        """The process-wide driver (``cuInit`` runs on first use only)."""
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    # --- error handling ------------------------------------------------------
    def error_name(self, err: Any) -> str:
        try:
            e2, name = self._d.cuGetErrorName(err)
            if e2 == self._d.CUresult.CUDA_SUCCESS and name:
                return name.decode() if isinstance(name, bytes) else str(name)
        except Exception:
            pass
        return getattr(err, "name", str(err))

    def _check(self, call: str, result: tuple, pid: int | None = None) -> tuple:
        err = result[0]
        if err != self._d.CUresult.CUDA_SUCCESS:
            raise CudaCheckpointError(call, self.error_name(err), pid)
        return result[1:]

    # --- per-process checkpoint API -----------------------------------------
    def state(self, pid: int) -> ProcessState | None:
        """The CUDA state of ``pid``; None when it is not a CUDA process."""
        err, st = self._d.cuCheckpointProcessGetState(pid)
        if err != self._d.CUresult.CUDA_SUCCESS:
            log.debug("pid %d is not a CUDA process (%s)", pid, self.error_name(err))
            return None
        return ProcessState(st.name.removeprefix("CU_PROCESS_STATE_").lower())

    def restore_thread_id(self, pid: int) -> int:
        """The thread CUDA uses to restore ``pid``: CRIU must restore it too."""
        (tid,) = self._check(
            "cuCheckpointProcessGetRestoreThreadId",
            self._d.cuCheckpointProcessGetRestoreThreadId(pid),
            pid,
        )
        return int(tid)

    def lock(self, pid: int, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        args = self._d.CUcheckpointLockArgs()
        args.timeoutMs = max(1, int(timeout_s * 1000))
        self._check("cuCheckpointProcessLock", self._d.cuCheckpointProcessLock(pid, args), pid)

    def checkpoint(self, pid: int) -> None:
        self._check(
            "cuCheckpointProcessCheckpoint", self._d.cuCheckpointProcessCheckpoint(pid, None), pid
        )

    def restore_args(self, gpu_pairs: Sequence[tuple[str, str]] = ()) -> Any:
        """``CUcheckpointRestoreArgs`` remapping old->new GPU UUIDs (None: no remap)."""
        if not gpu_pairs:
            return None
        args = self._d.CUcheckpointRestoreArgs()
        pairs = []
        for old, new in gpu_pairs:
            pair = self._d.CUcheckpointGpuPair()
            pair.oldUuid = self._uuid_struct(old)
            pair.newUuid = self._uuid_struct(new)
            pairs.append(pair)
        args.gpuPairs = pairs
        args.gpuPairsCount = len(pairs)
        return args

    def restore(self, pid: int, gpu_pairs: Sequence[tuple[str, str]] = ()) -> None:
        """Copy ``pid``'s memory back to the GPU, remapping old->new UUIDs if given."""
        args = self.restore_args(gpu_pairs)
        self._check(
            "cuCheckpointProcessRestore", self._d.cuCheckpointProcessRestore(pid, args), pid
        )

    def unlock(self, pid: int) -> None:
        self._check("cuCheckpointProcessUnlock", self._d.cuCheckpointProcessUnlock(pid, None), pid)

    # --- devices -------------------------------------------------------------
    def gpus(self) -> tuple[GpuInfo, ...]:
        """Every GPU this process can see, in CUDA ordinal order."""
        (count,) = self._check("cuDeviceGetCount", self._d.cuDeviceGetCount())
        (version,) = self._check("cuDriverGetVersion", self._d.cuDriverGetVersion())
        cuda_version = f"{version // 1000}.{(version % 1000) // 10}"
        driver_version = host_driver_version()
        out = []
        for ordinal in range(count):
            (dev,) = self._check("cuDeviceGet", self._d.cuDeviceGet(ordinal))
            (name,) = self._check("cuDeviceGetName", self._d.cuDeviceGetName(256, dev))
            (uuid,) = self._check("cuDeviceGetUuid", self._d.cuDeviceGetUuid(dev))
            model = name.split(b"\0", 1)[0].decode() if isinstance(name, bytes) else str(name)
            out.append(
                GpuInfo(
                    model=model,
                    uuid=format_uuid(bytes(uuid.bytes)),
                    driver_version=driver_version,
                    cuda_version=cuda_version,
                )
            )
        return tuple(out)

    def retain_primary_context(self, ordinal: int) -> Any:
        """Retain (bring up, if it is not) the primary context of GPU ``ordinal``; its handle."""
        (dev,) = self._check("cuDeviceGet", self._d.cuDeviceGet(ordinal))
        (ctx,) = self._check("cuDevicePrimaryCtxRetain", self._d.cuDevicePrimaryCtxRetain(dev))
        return ctx

    def _uuid_struct(self, text: str) -> Any:
        raw = parse_uuid(text)
        u = self._d.CUuuid()
        u.bytes = raw
        return u


format_uuid = format_gpu_uuid  # one spelling, in the contract


def parse_uuid(text: str) -> bytes:
    hexdigits = text.removeprefix("GPU-").replace("-", "")
    if not re.fullmatch(r"[0-9a-fA-F]{32}", hexdigits):
        raise ValueError(f"not a GPU UUID: {text!r}")
    return bytes.fromhex(hexdigits)


def host_driver_version() -> str:
    """The kernel driver's version (e.g. ``580.159.04``); CUDA's API does not expose it."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
        m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", text)
        if m:
            return m.group(1)
    except OSError:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def cuda_processes(driver: CudaDriver, root: int) -> list[int]:
    """The CUDA processes of ``root``'s tree (not just the root: workers, helpers)."""
    return [pid for pid in process_tree(root) if driver.state(pid) is not None]


def process_visible_gpus(pid: int, all_gpus: Sequence[GpuInfo]) -> tuple[GpuInfo, ...]:
    """The GPUs a container process was given (NVIDIA_/CUDA_VISIBLE_DEVICES), else all."""
    try:
        env = dict(
            kv.split("=", 1)
            for kv in (_PROC / str(pid) / "environ").read_text(errors="replace").split("\0")
            if "=" in kv
        )
    except OSError:
        return tuple(all_gpus)
    for var in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        value = env.get(var, "").strip()
        if not value or value in ("all", "void", "none"):
            continue
        chosen = []
        for item in value.split(","):
            item = item.strip()
            if item.isdigit() and int(item) < len(all_gpus):
                chosen.append(all_gpus[int(item)])
            else:
                chosen += [g for g in all_gpus if g.uuid == item]
        if chosen:
            return tuple(chosen)
    return tuple(all_gpus)


# --- compatibility ------------------------------------------------------------
def plan_gpu_mapping(
    snapshot: Sequence[GpuInfo], node: Sequence[GpuInfo]
) -> list[tuple[GpuInfo, GpuInfo]]:
    """Pair each snapshot GPU with a node GPU, or raise GpuIncompatible saying why.

    The restored process keeps calling the node's user-space driver, which the
    checkpoint was taken against: driver and CUDA versions must match exactly.
    Device memory is restored onto the same chip model only. A GPU with the
    same UUID is preferred; others are remapped by UUID pairs at restore.
    """
    if not snapshot:
        return []
    if not node:
        raise GpuIncompatible(
            f"snapshot needs {len(snapshot)} GPU(s) ({snapshot[0].model}) but this node has none"
        )
    if len(node) < len(snapshot):
        raise GpuIncompatible(
            f"snapshot needs {len(snapshot)} GPUs but this node offers {len(node)}"
        )
    want_driver = {g.driver_version for g in snapshot}
    want_cuda = {g.cuda_version for g in snapshot}
    have_driver = {g.driver_version for g in node}
    have_cuda = {g.cuda_version for g in node}
    if want_driver != have_driver:
        raise GpuIncompatible(
            f"driver {', '.join(sorted(have_driver))} on this node, snapshot was taken with "
            f"{', '.join(sorted(want_driver))}"
        )
    if want_cuda != have_cuda:
        raise GpuIncompatible(
            f"CUDA {', '.join(sorted(have_cuda))} on this node, snapshot was taken with "
            f"{', '.join(sorted(want_cuda))}"
        )
    free = list(node)
    plan: list[tuple[GpuInfo, GpuInfo]] = []
    for old in snapshot:
        same = [g for g in free if g.uuid == old.uuid and g.model == old.model]
        match = same or [g for g in free if g.model == old.model]
        if not match:
            models = ", ".join(sorted({g.model for g in free})) or "none left"
            raise GpuIncompatible(f"no free {old.model} on this node (free: {models})")
        free.remove(match[0])
        plan.append((old, match[0]))
    return plan


def gpu_compat_problem(snapshot: Sequence[GpuInfo], node: Sequence[GpuInfo]) -> str | None:
    """None when ``snapshot`` can be restored onto ``node``, else the reason."""
    try:
        plan_gpu_mapping(snapshot, node)
    except GpuIncompatible as e:
        return str(e)
    return None


def uuid_pairs(plan: Iterable[tuple[GpuInfo, GpuInfo]]) -> list[tuple[str, str]]:
    """Remapping pairs for ``cuCheckpointProcessRestore``; empty if every GPU stays put."""
    pairs = [(old.uuid, new.uuid) for old, new in plan]
    return [] if all(a == b for a, b in pairs) else pairs


# --- the pipeline step ---------------------------------------------------------
@dataclasses.dataclass
class CudaCheckpointStep:
    """The GPU part of a checkpoint/restore, around CRIU's dump and restore.

    checkpoint side: ``before_dump`` (lock + checkpoint every CUDA process),
    CRIU dump, then ``after_dump`` (restore + unlock, so the source keeps
    serving) or, if the dump failed, ``abort`` (same, best effort).
    restore side: CRIU restore, then ``after_restore`` (restore + unlock).

    With ``state_dir`` set, device memory goes to ``gpu-<n>.bin`` files there
    (``agent.gpu_storage``) instead of through the process's host memory and
    CRIU; the n-th CUDA process of the restored tree gets the n-th file.
    """

    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
    state_dir: Path | None = None
    driver_factory: Callable[[], CudaDriver] = CudaDriver.get
    pids: list[int] = dataclasses.field(default_factory=list)
    gpus: tuple[GpuInfo, ...] = ()
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def before_dump(self, root_pid: int) -> list[int]:
        """Lock then checkpoint every CUDA process; returns their pids (may be none)."""
        try:
            driver = self.driver_factory()
        except CudaUnavailable as e:
            log.info("no CUDA driver (%s): CPU-only checkpoint", e.name)
            return []
        t0 = time.monotonic()
        self.pids = cuda_processes(driver, root_pid)
        if not self.pids:
            return []
        self.gpus = process_visible_gpus(root_pid, driver.gpus())
        if self.state_dir is not None and not self._files_supported(driver):
            log.info("custom-storage checkpoint unsupported here: GPU memory goes through CRIU")
            self.state_dir = None
        locked: list[int] = []
        checkpointed: list[int] = []
        try:
            for pid in self.pids:  # lock all first: no process is mid-call to a frozen peer
                driver.lock(pid, self.lock_timeout_s)
                locked.append(pid)
            t1 = time.monotonic()
            for n, pid in enumerate(self.pids):
                if self.state_dir is None:
                    driver.checkpoint(pid)
                else:
                    self._files(driver).checkpoint(pid, self._state_file(n))
                checkpointed.append(pid)
        except CudaCheckpointError:
            self._rollback(driver, locked, checkpointed)
            raise
        t2 = time.monotonic()
        self.timings.update(cuda_lock_s=t1 - t0, cuda_checkpoint_s=t2 - t1)
        log.info("CUDA checkpointed pids %s in %.2fs", self.pids, t2 - t0)
        return list(self.pids)

    def after_dump(self) -> None:
        """Bring the (left-running) source back onto its GPU."""
        if not self.pids:
            return
        driver = self.driver_factory()
        t0 = time.monotonic()
        for n, pid in enumerate(self.pids):
            self._restore_one(driver, n, pid, ())
        for pid in self.pids:
            driver.unlock(pid)
        self.timings["cuda_source_resume_s"] = time.monotonic() - t0

    def abort(self) -> None:
        """After a failed dump: put the source back as it was, whatever state it is in."""
        if self.pids:
            driver = self.driver_factory()
            self._rollback(driver, self.pids, self.pids)

    def after_restore(self, root_pid: int, snapshot_gpus: Sequence[GpuInfo] = ()) -> list[int]:
        """After CRIU restore: copy device memory back and unlock every restored CUDA process."""
        if not snapshot_gpus:
            return []
        driver = self.driver_factory()
        if self.state_dir is not None and not self._state_file(0).exists():
            self.state_dir = None  # snapshot taken without GPU state files: host path
        plan = plan_gpu_mapping(snapshot_gpus, driver.gpus())
        pairs = uuid_pairs(plan)
        t0 = time.monotonic()
        pids = [p for p in process_tree(root_pid) if driver.state(p) == ProcessState.CHECKPOINTED]
        if not pids:
            raise CudaCheckpointError(
                "cuCheckpointProcessGetState",
                "NO_CHECKPOINTED_PROCESS",
                root_pid,
                "snapshot records GPUs but no restored process is in the checkpointed state",
            )
        for n, pid in enumerate(pids):
            self._restore_one(driver, n, pid, pairs)
        t1 = time.monotonic()
        for pid in pids:
            driver.unlock(pid)
        self.timings.update(cuda_restore_s=t1 - t0, cuda_unlock_s=time.monotonic() - t1)
        self.pids = pids
        return pids

    def _state_file(self, n: int) -> Path:
        assert self.state_dir is not None
        return self.state_dir / f"gpu-{n}.bin"

    @staticmethod
    def _files_supported(driver: CudaDriver) -> bool:
        from agent.gpu_storage import supported

        return supported(driver)

    @staticmethod
    def _files(driver: CudaDriver) -> Any:
        from agent.gpu_storage import GpuStateFiles

        return GpuStateFiles.get(driver)

    def _restore_one(
        self, driver: CudaDriver, n: int, pid: int, pairs: Sequence[tuple[str, str]]
    ) -> None:
        if self.state_dir is None:
            driver.restore(pid, pairs)
        else:
            stats = self._files(driver).restore(
                pid, self._state_file(n), driver.restore_args(pairs)
            )
            for k, v in stats.items():
                self.timings[k] = self.timings.get(k, 0.0) + v

    def _rollback(
        self, driver: CudaDriver, locked: Sequence[int], checkpointed: Sequence[int]
    ) -> None:
        for n, pid in enumerate(checkpointed):
            try:
                if driver.state(pid) == ProcessState.CHECKPOINTED:
                    self._restore_one(driver, n, pid, ())
            except CudaCheckpointError as e:
                log.error("rollback: %s", e)
        for pid in locked:
            try:
                if driver.state(pid) == ProcessState.LOCKED:
                    driver.unlock(pid)
            except CudaCheckpointError as e:
                log.error("rollback: %s", e)
