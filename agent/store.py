"""The artifact store: one folder per published snapshot, built in staging, published by rename.

Layout (names from :mod:`thaw.contract`)::

    STORE/
      .staging/<name>.<random>/   being written (owner pid recorded); never read as a snapshot
      <name>/manifest.json        contract.Manifest: every other file with size + sha256
      <name>/criu/...             CRIU images
      <name>/rootfs-diff.tar      the container's writable-layer changes
      <name>/process.json         what the restore needs to know about the dumped tree
      <name>/working-set.json     learned after publishing, not in the manifest (advisory)

A snapshot becomes visible only through ``rename(2)`` of a complete, fsynced
staging folder, so a crash at any point leaves either nothing or a whole
snapshot, and a stale staging folder is removed when its owner is gone.
``verify`` checks the manifest, the exact file set, sizes, checksums and
platform compatibility before a restore runs anything.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import secrets
import shutil
import stat
from pathlib import Path

from agent.digest import PIECE, digest_many, mismatches
from thaw.contract import (
    MANIFEST_FILE,
    MANIFEST_SIGNATURE_FILE,
    STORE_STAGING_DIR,
    WORKING_SET_FILE,
    FileEntry,
    Manifest,
    ManifestError,
)
from thaw.safe_files import UnsafeFile, read_manifest_bytes

OWNER_FILE = ".owner"
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")  # a Kubernetes object name
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
# The working set is learned after publishing (agent.working_set): advisory, so not vouched for.
_NOT_LISTED = {MANIFEST_FILE, MANIFEST_SIGNATURE_FILE, OWNER_FILE, WORKING_SET_FILE}


class StoreError(ValueError):
    """A bad name, a missing snapshot, or a store operation that cannot be done."""


class SnapshotInvalid(StoreError):
    """A snapshot that must not be restored; the message says exactly why."""


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise StoreError(
            f"invalid snapshot name {name!r}: use lowercase letters, digits, '-' and '.' "
            "(a Kubernetes object name); no '/', no '..'"
        )
    return name


def validate_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key) or ".." in key:
        raise StoreError(f"invalid snapshot key {key!r}: letters, digits, '.', '_', '-' only")
    return key


def new_name(key: str, now: dt.datetime | None = None) -> str:
    """A fresh, valid, sortable snapshot name derived from the key."""
    now = now or dt.datetime.now(dt.UTC)
    stem = re.sub(r"[^a-z0-9-]+", "-", key.lower()).strip("-")[:40].strip("-") or "snapshot"
    return f"{stem}-{now:%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def snapshot_files(folder: Path) -> list[str]:
    """Relative paths of the regular files of a snapshot folder (manifest excluded).

    Anything that is not a regular file or a directory (a symlink, a device, a
    fifo) makes the folder invalid: nothing in a snapshot may point elsewhere.
    """
    out: list[str] = []
    for dirpath, dirs, files in os.walk(folder):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            mode = os.lstat(full).st_mode
            rel = os.path.relpath(full, folder)
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise SnapshotInvalid(f"{rel}: not a regular file (symlinks are not allowed)")
            if rel not in _NOT_LISTED:
                out.append(rel)
    return sorted(out)


def file_entries(folder: Path) -> tuple[FileEntry, ...]:
    rels = snapshot_files(folder)
    digests = digest_many([folder / r for r in rels])
    entries = []
    for r in rels:
        d = digests[folder / r]
        piece = PIECE if d.pieces else 0
        entries.append(FileEntry(r, d.size, d.sha256, piece_bytes=piece, pieces=d.pieces))
    return tuple(entries)


class Store:
    """A snapshot store rooted at a directory (created if missing)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        signing_key: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.signing_key = signing_key  # set: publish signs the manifest (agent.signing)
        self.staging_root = self.root / STORE_STAGING_DIR
        if self.staging_root.is_symlink():  # writes would land wherever it points
            raise StoreError(f"{self.staging_root} is a symlink; refusing to write through it")
        self.staging_root.mkdir(parents=True, exist_ok=True)

    # --- names -> paths, never escaping the root -------------------------
    def path(self, name: str) -> Path:
        p = self.root / validate_name(name)
        if p.is_symlink():
            raise StoreError(f"snapshot {name!r} is a symlink; refusing to follow it")
        return p

    def exists(self, name: str) -> bool:
        return (self.path(name) / MANIFEST_FILE).is_file()

    # --- writing -----------------------------------------------------------
    def new_staging(self, name: str) -> Path:
        validate_name(name)
        d = self.staging_root / f"{name}.{secrets.token_hex(4)}"
        d.mkdir()
        owner = {"pid": os.getpid(), "boot_id": _boot_id(), "host": platform.node()}
        try:
            (d / OWNER_FILE).write_text(json.dumps(owner))
        except OSError:  # e.g. the store is full: leave nothing behind
            shutil.rmtree(d, ignore_errors=True)
            raise
        return d

    def publish(self, staging: Path, manifest: Manifest) -> Path:
        """Write the manifest into ``staging``, fsync everything, rename into place."""
        if staging.parent != self.staging_root:
            raise StoreError(f"{staging} is not a staging folder of {self.root}")
        dest = self.path(manifest.name)
        (staging / OWNER_FILE).unlink(missing_ok=True)
        (staging / MANIFEST_FILE).write_text(manifest.to_json())
        if self.signing_key:  # in staging: a snapshot is never visible unsigned
            from agent.signing import sign_snapshot

            sign_snapshot(staging, self.signing_key)
        _fsync_tree(staging)
        try:
            os.rename(staging, dest)
        except OSError as e:
            self.discard(staging)
            raise StoreError(f"cannot publish {manifest.name}: {e.strerror}") from None
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return dest

    def discard(self, staging: Path) -> None:
        if staging.parent == self.staging_root:
            shutil.rmtree(staging, ignore_errors=True)

    def delete(self, name: str) -> None:
        """Make the snapshot disappear atomically (rename into staging), then remove it."""
        src = self.path(name)
        if not src.is_dir():
            raise StoreError(f"no snapshot named {name!r} in {self.root}")
        trash = self.staging_root / f"{name}.deleted.{secrets.token_hex(4)}"
        os.rename(src, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def clean_stale(self) -> list[str]:
        """Remove staging folders whose writer is gone (crashed or killed mid-dump)."""
        removed = []
        boot = _boot_id()
        for entry in self.staging_root.iterdir():
            try:
                owner = json.loads((entry / OWNER_FILE).read_text())
            except (OSError, ValueError):
                owner = {}
            pid = owner.get("pid")
            same_boot = owner.get("boot_id") == boot and owner.get("host") == platform.node()
            if same_boot and isinstance(pid, int) and _pid_alive(pid):
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        return removed

    # --- reading -----------------------------------------------------------
    def names(self) -> list[str]:
        out = []
        for entry in sorted(self.root.iterdir()):
            if entry.name == STORE_STAGING_DIR or entry.is_symlink() or not entry.is_dir():
                continue
            if _NAME_RE.fullmatch(entry.name) and (entry / MANIFEST_FILE).is_file():
                out.append(entry.name)
        return out

    def manifest(self, name: str) -> Manifest:
        """The parsed manifest; ManifestError or OSError (UnsafeFile) when it is not one."""
        try:
            return Manifest.from_json(read_manifest_bytes(self.path(name)))
        except FileNotFoundError:
            raise StoreError(f"no snapshot named {name!r} in {self.root}") from None

    def list(self) -> list[tuple[str, Manifest | None, str]]:
        """(name, manifest or None, problem) for every published folder."""
        out: list[tuple[str, Manifest | None, str]] = []
        for name in self.names():
            try:
                out.append((name, self.manifest(name), ""))
            except (ManifestError, OSError) as e:
                out.append((name, None, str(e)))
        return out

    def newest_for_key(self, key: str) -> str | None:
        best: tuple[str, str] | None = None
        for name, m, _ in self.list():
            if m is not None and m.key == key and (best is None or (m.created, name) > best):
                best = (m.created, name)
        return best[1] if best else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- verification -------------------------------------------------------------
def _kernel_tuple(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def compat_problem(manifest: Manifest, criu_version: str | None) -> str | None:
    """Why this node cannot restore the snapshot, or None."""
    if manifest.arch != platform.machine():
        return f"snapshot is for {manifest.arch}, this node is {platform.machine()}"
    here = platform.release()
    if _kernel_tuple(here) < _kernel_tuple(manifest.kernel):
        return f"snapshot was taken on kernel {manifest.kernel}, this node runs older {here}"
    if criu_version:
        snap_major = manifest.criu_version.split(".")[0]
        if snap_major != criu_version.split(".")[0]:
            return f"snapshot was dumped by CRIU {manifest.criu_version}, node has {criu_version}"
    return None


def verify(folder: Path, criu_version: str | None = None, check_compat: bool = True) -> Manifest:
    """Check a snapshot folder completely; raise SnapshotInvalid with the first reason."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        raise SnapshotInvalid(f"{folder}: not a snapshot folder")
    try:
        manifest = Manifest.from_json(read_manifest_bytes(folder))
    except FileNotFoundError:
        raise SnapshotInvalid(f"{folder.name}: {MANIFEST_FILE} is missing") from None
    except (ManifestError, UnsafeFile) as e:
        raise SnapshotInvalid(f"{folder.name}: {e}") from None
    except OSError as e:
        raise SnapshotInvalid(f"{folder.name}: cannot read {MANIFEST_FILE}: {e}") from None
    if folder.parent.name != STORE_STAGING_DIR and manifest.name != folder.name:
        raise SnapshotInvalid(f"{folder.name}: manifest names another snapshot {manifest.name!r}")
    listed = {}
    for f in manifest.files:
        p = Path(f.path)
        if p.is_absolute() or ".." in p.parts or f.path in _NOT_LISTED:
            raise SnapshotInvalid(f"{folder.name}: manifest lists an unsafe path {f.path!r}")
        listed[f.path] = f
    try:
        present = set(snapshot_files(folder))
        missing = sorted(set(listed) - present)
        extra = sorted(present - set(listed))
        if missing:
            raise SnapshotInvalid(f"{folder.name}: missing files {missing[:5]}")
        if extra:
            raise SnapshotInvalid(f"{folder.name}: files not in the manifest {extra[:5]}")
        for rel, f in listed.items():
            size = (folder / rel).stat().st_size
            if size != f.size:
                raise SnapshotInvalid(
                    f"{folder.name}: {rel} is {size} bytes, manifest says {f.size}"
                )
        bad = mismatches(
            [(folder / r, f.sha256, f.piece_bytes, f.pieces) for r, f in sorted(listed.items())]
        )
    except OSError as e:  # deleted or replaced while we looked: not a snapshot to trust
        raise SnapshotInvalid(f"{folder.name}: changed while being verified: {e}") from None
    if bad:
        rel = bad[0].relative_to(folder)
        raise SnapshotInvalid(f"{folder.name}: {rel} checksum mismatch (corrupt artifact)")
    if check_compat:
        problem = compat_problem(manifest, criu_version)
        if problem:
            raise SnapshotInvalid(f"{folder.name}: incompatible: {problem}")
    return manifest
