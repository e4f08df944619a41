"""Where the webhook learns which Ready snapshots exist, without I/O per request.

Two views share one protocol, ``find_ready(key, namespace)``:

* ``DirectorySnapshots`` reads ``<dir>/<name>/manifest.json`` (``--snapshots``,
  local runs and ``thaw inject``); it re-scans only when the folder changes.
* ``ClusterSnapshots`` mirrors Snapshot objects from the API server with
  list + watch in a background thread (resume from resourceVersion, re-list
  when the server says 410 Gone). Admission requests only read its in-memory
  index, so a slow API server never slows pod creation.

A snapshot from another namespace is never returned.

API server outage: a cache that has listed once keeps answering from its
last state (stale but consistent; ``stale_for()`` says since when) and
/readyz stays up but names the outage. A cache that never listed is not
``synced``: /readyz fails and the decision skips auto/restore pods with
``snapshots-not-synced`` (admitted as written) rather than guessing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from thaw import contract
from thaw.safe_files import read_manifest_bytes

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SnapshotRef:
    """A Ready snapshot a pod may be restored from."""

    name: str
    namespace: str
    key: str
    artifact: str
    created: str = ""  # RFC 3339; newest wins when several match


class SnapshotView(Protocol):
    synced: bool

    def find_ready(self, key: str, namespace: str) -> SnapshotRef | None: ...


def newest(refs: list[SnapshotRef]) -> SnapshotRef | None:
    """Deterministic pick among matches: newest creation time, then name."""
    return max(refs, key=lambda r: (r.created, r.name), default=None)


class NoSnapshots:
    """The view when none is configured: every pod starts in checkpoint mode."""

    synced = True

    def find_ready(self, key: str, namespace: str) -> SnapshotRef | None:
        return None


class DirectorySnapshots:
    """Published snapshot folders in an artifact store directory."""

    synced = True
    MAX_AGE_S = 5.0

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._stamp: tuple[int, int, int] | None = None
        self._refs: list[SnapshotRef] = []
        self._lock = threading.Lock()

    def find_ready(self, key: str, namespace: str) -> SnapshotRef | None:
        return newest([r for r in self._current() if r.key == key and r.namespace == namespace])

    def _current(self) -> list[SnapshotRef]:
        try:
            st = self.root.stat()
        except OSError as e:
            log.warning("snapshot directory %s unreadable: %s", self.root, e)
            return []
        # Snapshots are built in the staging folder and renamed into place, so a
        # new one changes the root's mtime and link count; the age bound covers
        # two renames within one coarse timestamp tick.
        stamp = (st.st_mtime_ns, st.st_nlink, int(time.monotonic() // self.MAX_AGE_S))
        with self._lock:
            if stamp != self._stamp:
                self._refs = self._scan()
                self._stamp = stamp
            return self._refs

    def _scan(self) -> list[SnapshotRef]:
        refs = []
        try:
            entries = sorted(self.root.iterdir())
        except OSError as e:
            log.warning("snapshot directory %s unreadable: %s", self.root, e)
            return []
        for entry in entries:
            # Dot folders (staging, agent heartbeats) are never snapshots.
            if entry.name.startswith(".") or entry.is_symlink() or not entry.is_dir():
                continue
            # Anyone who writes the store writes these files: read them without blocking,
            # bounded, and skip (never fail decisions on) whatever is not a manifest.
            try:
                manifest = contract.Manifest.from_json(read_manifest_bytes(entry))
            except (OSError, contract.ManifestError) as e:
                log.warning("skipping snapshot %s: %s", entry.name, e)
                continue
            if manifest.name != entry.name:
                log.warning("snapshot %s: manifest names it %r", entry.name, manifest.name)
            refs.append(
                SnapshotRef(
                    name=entry.name,  # the folder is what the restore step opens
                    namespace=manifest.source.namespace,
                    key=manifest.key,
                    artifact=entry.name,
                    created=manifest.created,
                )
            )
        return refs


class SnapshotIndex:
    """In-memory state of the Snapshot objects, fed by list and watch events."""

    def __init__(self) -> None:
        self._by_uid: dict[tuple[str, str], SnapshotRef | None] = {}
        self._lock = threading.Lock()

    def replace(self, objects: list[dict[str, Any]]) -> None:
        fresh = {_obj_id(o): _ref_if_ready(o) for o in objects}
        with self._lock:
            self._by_uid = fresh

    def apply(self, event_type: str, obj: dict[str, Any]) -> None:
        with self._lock:
            if event_type == "DELETED":
                self._by_uid.pop(_obj_id(obj), None)
            elif event_type in ("ADDED", "MODIFIED"):
                self._by_uid[_obj_id(obj)] = _ref_if_ready(obj)

    def find_ready(self, key: str, namespace: str) -> SnapshotRef | None:
        with self._lock:
            refs = [r for r in self._by_uid.values() if r and r.key == key]
        return newest([r for r in refs if r.namespace == namespace])

    def __len__(self) -> int:
        return len(self._by_uid)


def _obj_id(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


def _ref_if_ready(obj: dict[str, Any]) -> SnapshotRef | None:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if status.get(contract.STATUS_PHASE) != contract.Phase.READY:
        return None
    key, name = spec.get(contract.SPEC_KEY), meta.get("name")
    if not isinstance(key, str) or not isinstance(name, str):
        return None
    return SnapshotRef(
        name=name,
        namespace=str(meta.get("namespace", "")),
        key=key,
        artifact=str(spec.get(contract.SPEC_ARTIFACT) or name),
        created=str(meta.get("creationTimestamp") or ""),
    )


class ClusterSnapshots:
    """Watch-backed cache of Snapshot objects (all namespaces).

    ``synced`` turns true after the first full list; /readyz waits for it so
    a fresh replica never answers "no snapshot" merely because it has not
    listed yet.
    """

    WATCH_TIMEOUT_S = 300
    BACKOFF_S = (0.5, 1, 2, 5, 10)
    NO_CRD_RETRY_S = 10.0
    REQUEST_TIMEOUT_S = 30.0  # a list, or a connect, that takes longer is an outage

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._api = client.CustomObjectsApi(api_client)
        self.index = SnapshotIndex()
        self.synced = False
        self.resource_version: str | None = None
        self.lists = 0  # full lists done (1 + re-lists after 410 Gone)
        self.failing_since: float | None = None  # monotonic time of the first failed call
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def find_ready(self, key: str, namespace: str) -> SnapshotRef | None:
        return self.index.find_ready(key, namespace)

    def stale_for(self) -> float | None:
        """Seconds the API server has been unreachable, or None while it answers."""
        since = self.failing_since
        return None if since is None else time.monotonic() - since

    def _ok(self) -> None:
        if self.failing_since is not None:
            log.info("snapshot watch reconnected after %.1fs", self.stale_for() or 0.0)
        self.failing_since = None
        self.last_error = ""

    def _failed(self, error: Exception) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self.last_error = f"{type(error).__name__}: {error}"[:200]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="snapshot-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _list_args(self) -> tuple[str, str, str]:
        return (contract.CRD_GROUP, contract.CRD_VERSION, contract.CRD_PLURAL)

    def relist(self) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            listing = self._api.list_cluster_custom_object(
                *self._list_args(), _request_timeout=self.REQUEST_TIMEOUT_S
            )
        except ApiException as e:
            if e.status != 404:
                raise
            # No Snapshot CRD (yet): there is nothing to restore from, which is an
            # answer, not an outage. Stay ready and look again later.
            self.index.replace([])
            self.synced = True
            raise NoCrd(f"{contract.CRD_NAME} is not installed") from None
        self.index.replace(listing.get("items") or [])
        self.resource_version = listing["metadata"]["resourceVersion"]
        self.lists += 1
        self.synced = True
        log.info(
            "listed %d snapshots at resourceVersion %s", len(self.index), self.resource_version
        )

    def watch_once(self) -> None:
        """One watch call from ``resource_version``; returns when it ends.

        Raises ``Gone`` when the server has compacted past our version.
        """
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        w = watch.Watch()
        try:
            for event in w.stream(
                self._api.list_cluster_custom_object,
                *self._list_args(),
                resource_version=self.resource_version,
                timeout_seconds=self.WATCH_TIMEOUT_S,
                allow_watch_bookmarks=True,
                # A silent server (no FIN, e.g. a partition) must not hang the watch:
                # the read times out a little after the server-side watch timeout.
                _request_timeout=(self.REQUEST_TIMEOUT_S, self.WATCH_TIMEOUT_S + 30),
            ):
                if self._stop.is_set():
                    return
                kind, obj = event["type"], event["raw_object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(obj.get("message", "resource version too old"))
                    log.warning("watch error event: %s", obj)
                    return
                if kind != "BOOKMARK":
                    self.index.apply(kind, obj)
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    self.resource_version = rv
        except ApiException as e:
            if e.status == 410:
                raise Gone(str(e.reason)) from None
            raise
        finally:
            w.stop()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self.relist()
                    self._ok()
                self.watch_once()
                self._ok()
                failures = 0
            except Gone as e:
                log.info("snapshot watch expired (%s); re-listing", e)
                self.resource_version = None
            except NoCrd as e:
                self._ok()
                log.warning("%s; every pod gets checkpoint mode until it is", e)
                self._stop.wait(self.NO_CRD_RETRY_S)
            except Exception as e:
                delay = self.BACKOFF_S[min(failures, len(self.BACKOFF_S) - 1)]
                failures += 1
                self._failed(e)
                log.warning("snapshot watch failed (%s); retrying in %ss", e, delay)
                self._stop.wait(delay)


class Gone(Exception):
    """The watch's resourceVersion is too old (HTTP 410); a re-list is needed."""


class NoCrd(Exception):
    """The API server does not serve Snapshot objects (CRD missing)."""
