"""Write OCI image layouts from plain directories, with no registry and no daemon.

The node's images are built from rootfs folders (busybox, debootstrap, an
overlay upper dir); this module turns each folder into an uncompressed tar
layer, writes the config and manifest JSON and an ``index.json`` that names
the image, so ``ctr images import`` can load it. Uncompressed layers: building
them is cheap and they never leave the machine.

Overlay upper dirs are converted to OCI layer semantics: a whiteout (char
device 0/0) becomes ``.wh.<name>``, an opaque directory gets ``.wh..wh..opq``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_ANNOTATION = "io.containerd.image.name"
TAG_ANNOTATION = "org.opencontainers.image.ref.name"
# Never part of an image: the kernel and the runtime provide them.
SKIP_TOP = ("proc", "sys", "dev", "run", "tmp")


class ImageError(RuntimeError):
    """A rootfs that cannot become a layer (missing folder, unreadable entry)."""


@dataclasses.dataclass(frozen=True)
class Layer:
    digest: str  # sha256:<hex> of the tar, which is also its diff_id (uncompressed)
    size: int


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """The runtime part of the image config: what a container runs by default."""

    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Sequence[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    workdir: str = "/"
    user: str = ""  # "uid:gid"; empty runs as root


def _walk(root: Path) -> Iterator[Path]:
    """Every entry below root, parents before children, sorted for reproducible tars."""
    stack = [root]
    while stack:
        cur = stack.pop()
        names = sorted(os.listdir(cur), reverse=True)
        for name in names:
            path = cur / name
            rel = path.relative_to(root)
            if len(rel.parts) == 1 and rel.parts[0] in SKIP_TOP:
                # keep the empty mount point, drop its content
                yield path
                continue
            yield path
            if path.is_dir() and not path.is_symlink():
                stack.append(path)


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: Path) -> bool:
    for attr in ("trusted.overlay.opaque", "user.overlay.opaque"):
        try:
            if os.getxattr(path, attr, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


class _HashingWriter(io.RawIOBase):
    """File wrapper that hashes what tarfile writes, so the layer is read only once."""

    def __init__(self, f: io.BufferedWriter) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.sha.update(b)
        self.size += len(b)
        return self._f.write(b)


def write_layer(rootfs: Path, blobs: Path, overlay_upper: bool = False) -> Layer:
    """Tar ``rootfs`` into ``blobs/sha256/<digest>``; whiteouts converted if overlay_upper."""
    if not rootfs.is_dir():
        raise ImageError(f"layer source {rootfs} is not a directory")
    (blobs / "sha256").mkdir(parents=True, exist_ok=True)
    tmp = blobs / f".layer-{os.getpid()}.tar"
    with open(tmp, "wb") as raw:
        hw = _HashingWriter(raw)
        with tarfile.open(fileobj=hw, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for path in _walk(rootfs):
                rel = path.relative_to(rootfs).as_posix()
                top = rel.split("/", 1)[0]
                if "/" in rel and top in SKIP_TOP:
                    continue
                st = path.lstat()
                if overlay_upper and _is_whiteout(st):
                    parent, _, name = rel.rpartition("/")
                    wh = tarfile.TarInfo(f"{parent}/.wh.{name}" if parent else f".wh.{name}")
                    wh.mtime = int(st.st_mtime)
                    tar.addfile(wh)
                    continue
                info = tar.gettarinfo(str(path), arcname=rel)
                info.uname = info.gname = ""
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
                if overlay_upper and stat.S_ISDIR(st.st_mode) and _is_opaque(path):
                    opq = tarfile.TarInfo(f"{rel}/.wh..wh..opq")
                    opq.mtime = int(st.st_mtime)
                    tar.addfile(opq)
    digest = hw.sha.hexdigest()
    os.replace(tmp, blobs / "sha256" / digest)
    return Layer(f"sha256:{digest}", hw.size)


def _write_blob(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / "sha256").mkdir(parents=True, exist_ok=True)
    (blobs / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def write_image(layout: Path, ref: str, layers: Sequence[Layer], config: ImageConfig) -> str:
    """Write config, manifest, index.json and oci-layout; returns the manifest digest."""
    blobs = layout / "blobs"
    for layer in layers:
        if not (blobs / "sha256" / layer.digest.removeprefix("sha256:")).is_file():
            raise ImageError(f"layer {layer.digest} is not in {blobs}")
    cfg: dict[str, object] = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": list(config.env),
            "WorkingDir": config.workdir,
            **({"Entrypoint": list(config.entrypoint)} if config.entrypoint else {}),
            **({"Cmd": list(config.cmd)} if config.cmd else {}),
            **({"User": config.user} if config.user else {}),
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        "history": [{"created_by": "thaw scripts/node"} for _ in layers],
    }
    cfg_digest, cfg_size = _write_blob(blobs, json.dumps(cfg, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": cfg_digest, "size": cfg_size},
        "layers": [
            {"mediaType": MEDIA_LAYER, "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
    }
    man_digest, man_size = _write_blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    tag = ref.rpartition(":")[2]
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": man_digest,
                "size": man_size,
                "annotations": {REF_ANNOTATION: ref, TAG_ANNOTATION: tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index, sort_keys=True))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return man_digest


def link_blob(src_layout: Path, dst_layout: Path, layer: Layer) -> None:
    """Share a layer blob between two layouts (hard link, copy across filesystems)."""
    hexd = layer.digest.removeprefix("sha256:")
    src = src_layout / "blobs" / "sha256" / hexd
    dst = dst_layout / "blobs" / "sha256" / hexd
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def archive(layout: Path, out: Path) -> None:
    """Tar an OCI layout (the form ``ctr images import`` reads)."""
    tmp = out.with_suffix(".part")
    with tarfile.open(tmp, "w") as tar:
        for name in ("oci-layout", "index.json"):
            tar.add(layout / name, arcname=name)
        tar.add(layout / "blobs", arcname="blobs")
    os.replace(tmp, out)
