"""The pod <-> webhook <-> agent <-> sidecar contract.

Every name that crosses a process or component boundary is spelled here and
only here: labels, annotations, env vars, container and volume names, control
files, the Snapshot CRD coordinates and the artifact manifest schema. The
webhook, the agent and the sidecar all import this module, so they cannot
drift apart.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import reprlib
from typing import Final

DOMAIN: Final = "thaw.dev"

# --- Opt-in and user-facing annotations ------------------------------------
LABEL_ENABLED: Final = f"{DOMAIN}/enabled"
LABEL_ENABLED_VALUE: Final = "true"

ANNOTATION_CONTAINER: Final = f"{DOMAIN}/container"  # target container; default: first
ANNOTATION_MODE: Final = f"{DOMAIN}/mode"  # see Mode
ANNOTATION_WARM: Final = f"{DOMAIN}/warm"  # see Warm: how the sidecar tells the engine is warm
ANNOTATION_ENGINE: Final = f"{DOMAIN}/engine"  # see Engine: sleep/wake endpoints by engine
ANNOTATION_SLEEP_PATH: Final = f"{DOMAIN}/sleep-path"  # POSTed before the dump (probe's port)
ANNOTATION_WAKE_PATH: Final = f"{DOMAIN}/wake-path"  # POSTed after the dump or the restore
ANNOTATION_CHECKPOINT_WINDOW: Final = f"{DOMAIN}/checkpoint-window"  # seconds to get warm
DEFAULT_CHECKPOINT_WINDOW_S: Final = 900
MAX_CHECKPOINT_WINDOW_S: Final = 86400

# Written by the webhook (never by users).
ANNOTATION_INJECTED: Final = f"{DOMAIN}/injected"  # see InjectedMode
ANNOTATION_SNAPSHOT_KEY: Final = f"{DOMAIN}/snapshot-key"
ANNOTATION_SNAPSHOT: Final = f"{DOMAIN}/snapshot"  # restore mode: snapshot name


class Mode(enum.StrEnum):
    """Value of the ``thaw.dev/mode`` annotation."""

    AUTO = "auto"
    CHECKPOINT = "checkpoint"
    RESTORE = "restore"
    OFF = "off"


class Warm(enum.StrEnum):
    """Value of ``thaw.dev/warm``: what says the worker is warm enough to checkpoint.

    probe  the worker container's own readinessProbe (httpGet or tcpSocket), run by
           the sidecar, which then writes ``ready-for-checkpoint`` for the engine
    hook   the engine writes ``ready-for-checkpoint`` itself (``sidecar.hooks``)
    """

    PROBE = "probe"
    HOOK = "hook"


class Engine(enum.StrEnum):
    """Value of ``thaw.dev/engine``: an engine whose sleep/wake endpoints thaw knows."""

    VLLM = "vllm"  # needs --enable-sleep-mode (and VLLM_SERVER_DEV_MODE=1)
    SGLANG = "sglang"  # needs --enable-memory-saver


# (sleep, wake) paths on the port of the worker's readinessProbe, POSTed by the sidecar.
ENGINE_ENDPOINTS: Final = {
    Engine.VLLM: ("/sleep?level=1", "/wake_up"),
    Engine.SGLANG: ("/release_memory_occupation", "/resume_memory_occupation"),
}


class InjectedMode(enum.StrEnum):
    """Value of the ``thaw.dev/injected`` annotation and of ``THAW_MODE``."""

    CHECKPOINT = "checkpoint"
    RESTORE = "restore"


# --- Control volume, env and signal files ----------------------------------
CONTROL_VOLUME: Final = "thaw-control"
CONTROL_DIR: Final = "/var/run/thaw"

ENV_CONTROL_DIR: Final = "THAW_CONTROL_DIR"
ENV_MODE: Final = "THAW_MODE"
ENV_SNAPSHOT_KEY: Final = "THAW_SNAPSHOT_KEY"
ENV_SNAPSHOT: Final = "THAW_SNAPSHOT"  # restore mode: snapshot name
ENV_RESTORE_TIMEOUT: Final = "THAW_RESTORE_TIMEOUT"  # seconds before cold start
# Set by the webhook on the injected containers (downward API), so they know their pod.
ENV_POD_NAME: Final = "THAW_POD_NAME"
ENV_POD_NAMESPACE: Final = "THAW_POD_NAMESPACE"
ENV_NODE_NAME: Final = "THAW_NODE_NAME"
ENV_TARGET_CONTAINER: Final = "THAW_TARGET_CONTAINER"  # name of the worker's container
# Sidecar: an engine's own HTTP endpoints (e.g. vLLM /health, /sleep?level=1, /wake_up).
ENV_ENGINE_HEALTH_URL: Final = "THAW_ENGINE_HEALTH_URL"
ENV_ENGINE_SLEEP_URL: Final = "THAW_ENGINE_SLEEP_URL"
ENV_ENGINE_WAKE_URL: Final = "THAW_ENGINE_WAKE_URL"
# A sleep/wake URL that is only a path ("/sleep?level=1") is on the warm probe's endpoint.
ENV_WARM_PROBE: Final = "THAW_WARM_PROBE"  # WarmProbe.to_json() of the worker's readinessProbe
ENV_POD_IP: Final = "THAW_POD_IP"  # the probe's default host, as the kubelet's
ENV_CHECKPOINT_WINDOW: Final = "THAW_CHECKPOINT_WINDOW"  # seconds to get warm, then cold


class Signal(enum.StrEnum):
    """Files in the control directory; each one is a one-way message.

    ready-for-checkpoint  worker/sidecar -> agent: warm and quiesced, dump me
    checkpoint-complete   agent -> worker: snapshot published (or failed), resume
    restore-requested     restore init step -> agent: restore into this pod
    restore-complete      agent -> placeholder: restored, JSON {"pid": N, ...}
    restore-failed        agent -> placeholder: reason text; cold start
    checkpoint-abandoned  sidecar/hook -> agent: never dump this pod; JSON
                          {"reason": AbandonReason, "by": "sidecar"|"hook", "detail"}
    """

    READY_FOR_CHECKPOINT = "ready-for-checkpoint"
    CHECKPOINT_COMPLETE = "checkpoint-complete"
    RESTORE_REQUESTED = "restore-requested"
    RESTORE_COMPLETE = "restore-complete"
    RESTORE_FAILED = "restore-failed"
    CHECKPOINT_ABANDONED = "checkpoint-abandoned"


class AbandonReason(enum.StrEnum):
    """``reason`` of ``checkpoint-abandoned``: why the pod serves cold, unsnapshotted."""

    WARM_WINDOW = "warm-window-expired"  # no warm signal within the checkpoint window
    CHECKPOINT_DEADLINE = "checkpoint-deadline"  # no checkpoint-complete in time
    HOOK_TIMEOUT = "hook-timeout"  # sidecar.hooks waited in vain


# In the control dir: agents flock it per pod, so one checkpoint/restore runs at a time.
AGENT_LOCK_FILE: Final = ".thaw-agent.lock"
# On the host: a restore into a placeholder flocks <dir>/<pid>-<start time>.lock (and the pod's
# AGENT_LOCK_FILE when its control dir is reachable), so two restores never race in one pod.
RESTORE_LOCK_DIR: Final = "/run/thaw/restore-locks"


class ProbeError(ValueError):
    """A warm probe the sidecar cannot run; says which field is wrong."""


HTTP_SCHEMES: Final = ("http", "https")


@dataclasses.dataclass(frozen=True)
class WarmProbe:
    """The worker's readinessProbe as the sidecar runs it (``THAW_WARM_PROBE``).

    ``scheme`` "http" or "https" is an httpGet probe and "" a tcpSocket one;
    ``host`` "" is the pod IP. The webhook resolves named ports, so the sidecar
    never needs the pod spec.
    """

    port: int
    scheme: str = ""
    path: str = "/"
    host: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    period_s: float = 10
    timeout_s: float = 1
    success_threshold: int = 1
    failure_threshold: int = 3
    initial_delay_s: float = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WarmProbe:
        try:
            raw = json.loads(text)
        except ValueError as e:
            raise ProbeError(f"{ENV_WARM_PROBE} is not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ProbeError(f"{ENV_WARM_PROBE} must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        headers = raw.get("headers") or []
        if not isinstance(headers, list) or not all(
            isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h)
            for h in headers
        ):
            raise ProbeError(f"{ENV_WARM_PROBE}: headers must be [name, value] string pairs")
        try:
            probe = cls(**{**{k: v for k, v in raw.items() if k in known}, "headers": ()})
        except TypeError as e:
            raise ProbeError(f"{ENV_WARM_PROBE}: {e}") from None
        probe = dataclasses.replace(probe, headers=tuple((n, v) for n, v in headers))
        probe.check()
        return probe

    def check(self) -> None:
        """Raise ProbeError naming the first field out of range."""
        if not _ints(self.port) or not 0 < self.port < 65536:
            raise ProbeError(f"probe port {self.port!r} is not a port number")
        if self.scheme not in ("", *HTTP_SCHEMES):
            raise ProbeError(f"probe scheme {self.scheme!r} is not http or https")
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ProbeError(f"probe path {self.path!r} does not start with /")
        if not isinstance(self.host, str):
            raise ProbeError(f"probe host {self.host!r} is not a string")
        for name in ("period_s", "timeout_s", "success_threshold", "failure_threshold"):
            value = getattr(self, name)
            if not _numbers(value) or value <= 0:
                raise ProbeError(f"probe {name} {value!r} is not a positive number")
        if not _numbers(self.initial_delay_s) or self.initial_delay_s < 0:
            raise ProbeError(f"probe initial_delay_s {self.initial_delay_s!r} is negative")


# --- Injected containers ----------------------------------------------------
SIDECAR_CONTAINER: Final = "thaw-sidecar"
RESTORE_CONTAINER: Final = "thaw-restore"

# Commands the injected containers run (in the thaw image).
SIDECAR_ARGV: Final = ("thaw", "sidecar", "run")
RESTORE_INIT_ARGV: Final = ("thaw", "sidecar", "restore-init")
SIDECAR_PORT: Final = 9464  # sidecar HTTP: /readyz, /metrics
SIDECAR_READY_PATH: Final = "/readyz"

# Artifact store as seen from pods (restore init step prefetches from it) and the agent.
STORE_VOLUME: Final = "thaw-store"
STORE_MOUNT_PATH: Final = "/var/lib/thaw/snapshots"
ENV_STORE_DIR: Final = "THAW_STORE_DIR"
# Agent settings the Helm chart passes as env (values agent.retention / agent.signingKey).
ENV_RETENTION_MAX_PER_KEY: Final = "THAW_RETENTION_MAX_PER_KEY"  # 0: keep all
ENV_RETENTION_MAX_AGE_HOURS: Final = "THAW_RETENTION_MAX_AGE_HOURS"  # 0: keep forever
ENV_SIGNING_KEY_FILE: Final = "THAW_SIGNING_KEY_FILE"  # unset: manifests are not signed
# Each agent refreshes STORE/<AGENT_HEARTBEAT_DIR>/<node>.json (JSON {"node", "time", "pid"},
# "time" by the node's own clock) every AGENT_HEARTBEAT_S. The restore init step (same node,
# store mounted read-only) waits at most THAW_AGENT_WAIT seconds for a fresh one, else writes
# restore-failed ("no thaw agent on this node") so the placeholder cold-starts at once.
AGENT_HEARTBEAT_DIR: Final = ".agents"
AGENT_HEARTBEAT_S: Final = 2.0
AGENT_HEARTBEAT_STALE_S: Final = 10.0  # older than this: the agent is gone
ENV_AGENT_WAIT: Final = "THAW_AGENT_WAIT"  # seconds; 0: do not look for an agent
DEFAULT_AGENT_WAIT_S: Final = 15.0
DEFAULT_STORE_CLAIM: Final = "thaw-snapshots"  # PVC backing STORE_VOLUME (webhook option)

# --- Snapshot custom resource ----------------------------------------------
CRD_GROUP: Final = DOMAIN
CRD_VERSION: Final = "v1alpha1"
CRD_KIND: Final = "Snapshot"
CRD_PLURAL: Final = "snapshots"
CRD_NAME: Final = f"{CRD_PLURAL}.{CRD_GROUP}"
CRD_API_VERSION: Final = f"{CRD_GROUP}/{CRD_VERSION}"


class Phase(enum.StrEnum):
    """``status.phase`` of a Snapshot; only Ready snapshots are restored."""

    PENDING = "Pending"
    CHECKPOINTING = "Checkpointing"
    READY = "Ready"
    FAILED = "Failed"


# Snapshot object fields (camelCase, as in the CRD schema in the chart).
SPEC_KEY: Final = "key"  # the snapshot key the webhook computed
SPEC_ARTIFACT: Final = "artifact"  # folder name of the snapshot in the store
SPEC_IMAGE: Final = "image"
SPEC_SOURCE_POD: Final = "sourcePod"
STATUS_PHASE: Final = "phase"
STATUS_NODE: Final = "node"
STATUS_SIZE_BYTES: Final = "sizeBytes"
STATUS_MESSAGE: Final = "message"
STATUS_TIMINGS: Final = "timings"  # seconds per checkpoint phase
LABEL_SNAPSHOT_KEY: Final = f"{DOMAIN}/snapshot-key"  # on Snapshot objects, for selectors

# --- Artifact store layout and manifest ------------------------------------
MANIFEST_FILE: Final = "manifest.json"
MANIFEST_SIGNATURE_FILE: Final = "manifest.sig"
MANIFEST_SCHEMA_VERSION: Final = 1
STORE_STAGING_DIR: Final = ".staging"  # snapshots are built here, then renamed
CRIU_IMAGES_DIR: Final = "criu"  # CRIU image files inside a snapshot folder
ROOTFS_DIFF_FILE: Final = "rootfs-diff.tar"  # container's overlay upper dir
SHM_FILE: Final = "dev-shm.tar"  # the worker's /dev/shm, taken while the tree was frozen
PROCESS_INFO_FILE: Final = "process.json"  # dumped tree: root pid, stdio the restore re-wires
FILE_PAGES_FILE: Final = "file-pages.json"  # pages of mapped files a restore reads (agent)
# What restored workers touched of those files, learned after publishing: advisory, not listed
# in the manifest (agent.working_set)
WORKING_SET_FILE: Final = "working-set.json"


class ManifestError(ValueError):
    """A manifest that is missing, malformed or of an unknown schema version."""


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One file of a snapshot, relative to the snapshot folder.

    Files up to a piece in size carry their plain SHA-256. Larger ones list
    the SHA-256 of each ``piece_bytes`` piece (the last one shorter) and
    ``sha256`` is then the SHA-256 of those hex digests concatenated: every
    byte is still covered once, and a multi-GB memory image is hashed and
    checked on every core at once instead of at one core's SHA-256 speed.
    """

    path: str
    size: int
    sha256: str
    piece_bytes: int = 0
    pieces: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class GpuInfo:
    """What a GPU snapshot was taken on; a restore needs a compatible match."""

    model: str
    uuid: str
    driver_version: str
    cuda_version: str


def format_gpu_uuid(raw: bytes) -> str:
    """16 bytes -> ``GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`` (nvidia-smi's spelling)."""
    h = bytes(raw[:16]).hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


@dataclasses.dataclass(frozen=True)
class Source:
    """Where the checkpointed process lived."""

    namespace: str = ""
    pod: str = ""
    container: str = ""
    node: str = ""


@dataclasses.dataclass(frozen=True)
class Manifest:
    """``manifest.json`` at the root of every published snapshot folder.

    ``files`` lists every other file of the snapshot with its sha256, so the
    manifest (and its signature) vouches for the whole artifact.
    """

    name: str
    key: str
    created: str  # RFC 3339, UTC
    image: str
    kernel: str
    arch: str
    criu_version: str
    root_pid: int
    source: Source = Source()
    gpus: tuple[GpuInfo, ...] = ()
    files: tuple[FileEntry, ...] = ()
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    schema_version: int = MANIFEST_SCHEMA_VERSION

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        raw = versioned_object(text, "manifest", MANIFEST_SCHEMA_VERSION, ManifestError)
        version = raw["schema_version"]
        try:
            return cls(
                name=_typed(raw, "name", str),
                key=_typed(raw, "key", str),
                created=_typed(raw, "created", str),
                image=_typed(raw, "image", str),
                kernel=_typed(raw, "kernel", str),
                arch=_typed(raw, "arch", str),
                criu_version=_typed(raw, "criu_version", str),
                root_pid=_typed(raw, "root_pid", int),
                source=Source(**_strings(_typed(raw, "source", dict), "source")),
                gpus=tuple(GpuInfo(**_strings(g, "gpus")) for g in _typed(raw, "gpus", list)),
                files=tuple(_file_entry(f) for f in _typed(raw, "files", list)),
                timings=_timings(_typed(raw, "timings", dict)),
                schema_version=version,
            )
        except TypeError as e:
            raise ManifestError(f"manifest has a malformed field: {e}") from None


def versioned_object(text: str | bytes, what: str, version: int, error: type[ValueError]) -> dict:
    """A JSON object of schema ``version``; anything else raises ``error`` saying what is wrong."""
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply to be one") from None
    if not isinstance(raw, dict):
        raise error(f"{what} must be a JSON object")
    if type(raw.get("schema_version")) is not int or raw["schema_version"] != version:
        raise error(
            f"unsupported {what} schema_version {raw.get('schema_version')!r} "
            f"(this thaw reads {version})"
        )
    return raw


def _file_entry(raw: object) -> FileEntry:
    if not isinstance(raw, dict):
        raise ManifestError(f"manifest file entry must be an object, got {_short(raw)}")
    pieces = raw.get("pieces", [])
    entry = FileEntry(**{**raw, "pieces": tuple(pieces) if isinstance(pieces, list) else None})
    if (
        not isinstance(entry.path, str)
        or not entry.path
        or "\0" in entry.path
        or not isinstance(entry.sha256, str)
        or not _ints(entry.size, entry.piece_bytes)
        or entry.size < 0
        or entry.pieces is None
        or not all(isinstance(p, str) for p in entry.pieces)
    ):
        raise ManifestError(f"manifest file entry has a field of the wrong type: {_short(raw)}")
    if entry.pieces and (
        entry.piece_bytes <= 0 or len(entry.pieces) != -(-entry.size // entry.piece_bytes)
    ):
        raise ManifestError(f"manifest entry {entry.path!r}: pieces do not cover its size")
    return entry


def _typed(raw: dict, field: str, kind: type):
    value = raw.get(field)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(
            f"manifest field {field!r} must be {kind.__name__}, got {_short(value)}"
        )
    return value


def _strings(raw: object, field: str) -> dict:
    """An object whose values are all strings (``source``, each of ``gpus``)."""
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ManifestError(f"manifest field {field!r} must map names to strings: {_short(raw)}")
    return raw


def _timings(raw: dict) -> dict[str, float]:
    if not _numbers(*raw.values()):
        raise ManifestError(f"manifest field 'timings' must map names to numbers: {_short(raw)}")
    return raw


def _short(value: object) -> str:
    """A value for a one-line message (a malformed manifest may hold megabytes, deeply nested)."""
    return reprlib.repr(value)


# --- Device memory that travels outside CRIU --------------------------------
# An engine may keep large read-only device memory (its weights) in regions it can
# drop before a checkpoint and refill from files it already has on the node
# (``sidecar.weights``). At quiesce it describes them in GPU_REGIONS_FILE in its
# control dir; the agent copies that into the snapshot. On restore the agent's loader
# (``agent.gpu_regions``) refills them on the GPU while CRIU restores the process,
# and hands the memory over on GPU_REGIONS_SOCKET (POSIX fds of CUDA VMM handles).
GPU_REGIONS_FILE: Final = "gpu-regions.json"
GPU_REGIONS_SOCKET: Final = "gpu-regions.sock"
GPU_REGIONS_SCHEMA_VERSION: Final = 1


class RegionsError(ValueError):
    """A GPU regions description that is malformed, inconsistent or of an unknown version."""


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """A file a region is refilled from, as it was at the checkpoint."""

    path: str  # absolute, as the worker's container sees it
    size: int
    mtime_ns: int


@dataclasses.dataclass(frozen=True)
class RegionSource:
    """``length`` bytes at ``file_offset`` of ``path`` go to ``region_offset`` of the region."""

    path: str
    file_offset: int
    region_offset: int
    length: int


@dataclasses.dataclass(frozen=True)
class GpuRegion:
    name: str
    bytes: int  # size of the VMM allocation (a multiple of the allocation granularity)
    files: tuple[SourceFile, ...]
    sources: tuple[RegionSource, ...]

    @property
    def source_bytes(self) -> int:
        return sum(s.length for s in self.sources)


@dataclasses.dataclass(frozen=True)
class GpuRegions:
    """``gpu-regions.json``: what the worker released and where it comes back from."""

    regions: tuple[GpuRegion, ...]
    device: int = 0  # CUDA ordinal in the worker
    device_uuid: str = ""
    schema_version: int = GPU_REGIONS_SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> GpuRegions:
        raw = versioned_object(text, GPU_REGIONS_FILE, GPU_REGIONS_SCHEMA_VERSION, RegionsError)
        try:
            regions = tuple(
                GpuRegion(
                    name=r["name"],
                    bytes=r["bytes"],
                    files=tuple(SourceFile(**f) for f in r["files"]),
                    sources=tuple(RegionSource(**s) for s in r["sources"]),
                )
                for r in raw["regions"]
            )
            spec = cls(regions, raw.get("device", 0), raw.get("device_uuid", ""))
        except (KeyError, TypeError) as e:
            raise RegionsError(f"{GPU_REGIONS_FILE} has a malformed field: {e!r}") from None
        spec.check()
        return spec

    def check(self) -> None:
        """Every range inside its file and its region; integers where integers belong."""
        for r in self.regions:
            sizes = {f.path: f.size for f in r.files}
            if not _ints(r.bytes) or r.bytes <= 0:
                raise RegionsError(f"region {r.name!r}: bad size {r.bytes!r}")
            for f in r.files:
                if not f.path.startswith("/") or not _ints(f.size, f.mtime_ns):
                    raise RegionsError(f"region {r.name!r}: bad file entry {f!r}")
            for s in r.sources:
                if s.path not in sizes:
                    raise RegionsError(f"region {r.name!r}: {s.path} is not among its files")
                if (
                    not _ints(s.file_offset, s.region_offset, s.length)
                    or min(s.file_offset, s.region_offset, s.length) < 0
                ):
                    raise RegionsError(f"region {r.name!r}: bad range {s!r}")
                if s.file_offset + s.length > sizes[s.path] or s.region_offset + s.length > r.bytes:
                    raise RegionsError(f"region {r.name!r}: range {s!r} runs past its end")


def _ints(*values: object) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _numbers(*values: object) -> bool:
    """Finite ints or floats (JSON also spells NaN and Infinity)."""
    return all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )
