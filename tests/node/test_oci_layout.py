"""The OCI layout writer behind the node's images (no cluster needed; root for device nodes)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import oci
import pytest

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts are device nodes: root only")


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def test_layout_digests_and_names_are_consistent(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_text("#!/bin/sh\necho hi\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "bin" / "alias").symlink_to("tool")
    (root / "proc").mkdir()
    (root / "proc" / "junk").write_text("never in an image")
    layout = tmp_path / "layout"
    layer = oci.write_layer(root, layout / "blobs")
    cfg = oci.ImageConfig(entrypoint=("/bin/tool",), user="65532:65532")
    man_digest = oci.write_image(layout, "localhost/thaw/x:abc", [layer], cfg)

    data = blob(layout, layer.digest)
    assert layer.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert layer.size == len(data)
    index = json.loads((layout / "index.json").read_text())
    (entry,) = index["manifests"]
    assert entry["digest"] == man_digest
    assert entry["annotations"][oci.REF_ANNOTATION] == "localhost/thaw/x:abc"
    manifest = json.loads(blob(layout, man_digest))
    assert manifest["layers"][0]["digest"] == layer.digest
    config = json.loads(blob(layout, manifest["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == [layer.digest]  # uncompressed: digest == diff_id
    assert config["config"]["Entrypoint"] == ["/bin/tool"]
    assert config["config"]["User"] == "65532:65532"

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["bin/tool"].mode & 0o777 == 0o755
    assert members["bin/alias"].issym() and members["bin/alias"].linkname == "tool"
    assert "proc" in members and "proc/junk" not in members  # mount point kept, content not


@needs_root
def test_overlay_upper_dir_becomes_oci_whiteouts(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "etc" / "opaque").mkdir(parents=True)
    (upper / "etc" / "new.conf").write_text("x")
    os.mknod(upper / "etc" / "gone.conf", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    os.setxattr(upper / "etc" / "opaque", "trusted.overlay.opaque", b"y")
    layer = oci.write_layer(upper, tmp_path / "blobs", overlay_upper=True)
    path = tmp_path / "blobs" / "sha256" / layer.digest.removeprefix("sha256:")
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
    assert "etc/.wh.gone.conf" in names and "etc/gone.conf" not in names
    assert "etc/opaque/.wh..wh..opq" in names
    assert "etc/new.conf" in names


def test_missing_rootfs_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(oci.ImageError, match="not a directory"):
        oci.write_layer(tmp_path / "absent", tmp_path / "blobs")
    layer = oci.Layer("sha256:" + "0" * 64, 1)
    with pytest.raises(oci.ImageError, match="is not in"):
        oci.write_image(tmp_path / "layout", "localhost/thaw/x:1", [layer], oci.ImageConfig())
