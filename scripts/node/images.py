"""Build the node's container images locally: no registry, no docker.

pause   busybox-static + images/pause/pause (the pod sandbox process)
worker  Debian trixie minbase + python3 (images/base) + images/worker/app.py
thaw    the same base + criu/pycriu from apt (images/agent) + the project's Python
        dependencies (pip, cp313 wheels) + the thaw package itself; runs the
        webhook and the injected sidecar as uid 65532.
thaw-agent  the same layers, run as root: the node agent.
transformers-serve  Debian bookworm minbase + python3 (images/engine) + torch (CPU) and
        transformers[serving] (pip, cp311) + SmolLM2-135M-Instruct converted to safetensors
        (thaw.engine_model): a stock `transformers serve` image with no thaw code in it.

Each layer is cached under $THAW_CACHE/images/layers/<name>-<key>/, where the
key hashes everything that goes into it (recipe files, package lists, source
files), so a second build only re-tars what changed; editing thaw's code
rebuilds only the top layer. ``images.py build`` prints a JSON map
``{name: {"ref": ..., "layout": ...}}`` that the cluster imports with ctr.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import oci

from thaw import engine_model

REPO = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO / "images"
RECIPE_VERSION = "1"  # bump to rebuild every layer
SUITE = "trixie"
PY_SITE = "usr/local/lib/python3.13/dist-packages"  # trixie's python3 looks here first
PY_VERSION = "3.13"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def debian_mirror() -> str:
    """The Debian archive this machine's apt uses (or $THAW_DEBIAN_MIRROR)."""
    script = REPO / "scripts" / "debian-mirror.sh"
    return subprocess.run([str(script)], check=True, capture_output=True, text=True).stdout.strip()


# Trimmed from the base rootfs: documentation and apt state the images never use.
STRIP = ("usr/share/doc", "usr/share/man", "usr/share/info", "var/cache/apt", "var/lib/apt/lists")
THAW_SOURCES = ("thaw", "webhook", "agent", "sidecar", "certs")
REF_PREFIX = "localhost/thaw"
IMAGE_NAMES = ("pause", "worker", "thaw", "thaw-agent", "transformers-serve")
ENGINE_SUITE = "bookworm"
ENGINE_PY_VERSION = "3.11"
ENGINE_PY_SITE = "usr/local/lib/python3.11/dist-packages"
MODEL_PATH = "/models/smollm2-135m-instruct"  # where the engine image holds its model


def cache_root() -> Path:
    return Path(os.environ.get("THAW_CACHE", Path.home() / ".cache" / "thaw")) / "images"


def log(msg: str) -> None:
    print(f"images: {msg}", file=sys.stderr, flush=True)


def digest_of(*parts: bytes | str | Path) -> str:
    """Key of a layer: a hash over its inputs (file contents for paths)."""
    h = hashlib.sha256(RECIPE_VERSION.encode())
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for f in files:
                if "__pycache__" in f.parts:
                    continue
                rel = f.relative_to(REPO) if f.is_relative_to(REPO) else f.name
                h.update(str(rel).encode())
                h.update(f.read_bytes())
        else:
            h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def packages(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


@dataclasses.dataclass(frozen=True)
class CachedLayer:
    """A layer tar in the layer cache, plus (when kept) the rootfs it came from."""

    layer: oci.Layer
    layout: Path  # folder holding blobs/sha256/<digest>
    rootfs: Path | None


def _load(dirpath: Path) -> CachedLayer | None:
    meta = dirpath / "layer.json"
    if not meta.is_file():
        return None
    d = json.loads(meta.read_text())
    rootfs = dirpath / "rootfs"
    return CachedLayer(
        oci.Layer(d["digest"], d["size"]), dirpath, rootfs if rootfs.is_dir() else None
    )


def _finish(dirpath: Path, src: Path, keep_rootfs: bool, overlay_upper: bool) -> CachedLayer:
    layer = oci.write_layer(src, dirpath / "blobs", overlay_upper=overlay_upper)
    if keep_rootfs and src != dirpath / "rootfs":
        os.replace(src, dirpath / "rootfs")
    elif not keep_rootfs:
        shutil.rmtree(src)
    (dirpath / "layer.json").write_text(json.dumps({"digest": layer.digest, "size": layer.size}))
    return _load(dirpath)  # type: ignore[return-value]


def _fresh(name: str, key: str) -> tuple[Path, CachedLayer | None]:
    dirpath = cache_root() / "layers" / f"{name}-{key}"
    cached = _load(dirpath)
    if cached:
        return dirpath, cached
    if dirpath.exists():
        _rmtree_root(dirpath)
    dirpath.mkdir(parents=True)
    return dirpath, None


def _rmtree_root(path: Path) -> None:
    """Remove a tree that may hold root-owned device nodes or read-only dirs."""
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def _run(cmd: list[str], **kw: object) -> None:
    log("$ " + " ".join(cmd)[:200])
    subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


# --- layers -------------------------------------------------------------------


def pause_layer(node_root: Path) -> CachedLayer:
    busybox = node_root / "bin" / "busybox"
    key = digest_of(busybox, IMAGES_DIR / "pause")
    dirpath, cached = _fresh("pause", key)
    if cached:
        return cached
    root = dirpath / "build"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in ("sh", "sleep"):
        (root / "bin" / applet).symlink_to("busybox")
    shutil.copy2(IMAGES_DIR / "pause" / "pause", root / "pause")
    for d in ("proc", "sys", "dev", "tmp", "etc"):
        (root / d).mkdir()
    return _finish(dirpath, root, keep_rootfs=False, overlay_upper=False)


def base_layer(node_root: Path, recipe: str = "base", suite: str = SUITE) -> CachedLayer:
    pkgs = packages(IMAGES_DIR / recipe / "packages")
    key = digest_of(suite, ",".join(pkgs), ",".join(STRIP))
    dirpath, cached = _fresh(recipe, key)
    if cached:
        return cached
    root = dirpath / "build"
    debs = cache_root() / "debootstrap-debs"
    debs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DEBOOTSTRAP_DIR=str(node_root / "usr/share/debootstrap"))
    cmd = [str(node_root / "usr/sbin/debootstrap"), "--variant=minbase", f"--keyring={KEYRING}"]
    cmd += [f"--cache-dir={debs}", f"--include={','.join(pkgs)}", suite, str(root), debian_mirror()]
    _run(cmd, env=env, stdout=subprocess.DEVNULL)
    for rel in STRIP:
        for child in (root / rel).glob("*"):
            _rmtree_root(child)
    (root / "etc" / "resolv.conf").unlink(missing_ok=True)
    (root / "etc" / "hostname").unlink(missing_ok=True)
    return _finish(dirpath, root, keep_rootfs=True, overlay_upper=False)


_APT_IN_OVERLAY = r"""
set -euo pipefail
lower=$1 upper=$2 work=$3 merged=$4 mirror=$5; shift 5
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$merged"
mount -t proc proc "$merged/proc"
mount --rbind /dev "$merged/dev"
cp /etc/resolv.conf "$merged/etc/resolv.conf"
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
# The archive may be a dated mirror: sid's Release files carry a Valid-Until.
fresh=(-o Acquire::Check-Valid-Until=false)
sid=$1; shift
chroot "$merged" apt-get -q "${fresh[@]}" update >/dev/null
chroot "$merged" apt-get -q install -y --no-install-recommends "$@" >/dev/null
# CRIU from sid (with the newer libraries it needs), the image's own sources only.
echo "deb $mirror sid main" >"$merged/etc/apt/sources.list.d/sid.list"
chroot "$merged" apt-get -q "${fresh[@]}" update >/dev/null
# pkg/sid takes only these from sid; their dependencies come from trixie where it suffices.
# shellcheck disable=SC2086
chroot "$merged" apt-get -q install -y --no-install-recommends ${sid// //sid }/sid >/dev/null
rm "$merged/etc/apt/sources.list.d/sid.list"
chroot "$merged" criu --version | grep -Eq 'Version: (4\.([2-9]|[1-9][0-9])|[5-9])'
chroot "$merged" apt-get clean
rm -rf "$merged/var/lib/apt/lists/"* "$merged/etc/resolv.conf" "$merged/var/log/"*
rm -rf "$merged/usr/share/doc/"* "$merged/usr/share/man/"*
"""


def apt_layer(base: CachedLayer) -> CachedLayer:
    """Packages installed with apt in a chroot over the base; the overlay upper dir is the layer."""
    pkgs = packages(IMAGES_DIR / "agent" / "packages")
    sid = packages(IMAGES_DIR / "agent" / "packages-sid")
    key = digest_of(base.layer.digest, ",".join(pkgs), "sid:" + ",".join(sid), _APT_IN_OVERLAY)
    dirpath, cached = _fresh("apt", key)
    if cached:
        return cached
    assert base.rootfs is not None
    upper, work, merged = dirpath / "upper", dirpath / "work", dirpath / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    # A private mount namespace: every mount vanishes with the script, even on failure.
    _run(
        [
            *("unshare", "--mount", "--propagation", "private", "bash", "-c", _APT_IN_OVERLAY),
            *("apt", str(base.rootfs), str(upper), str(work), str(merged), debian_mirror()),
            *(" ".join(sid), *pkgs),
        ]
    )
    _rmtree_root(work)
    merged.rmdir()
    return _finish(dirpath, upper, keep_rootfs=False, overlay_upper=True)


def python_deps() -> list[str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(meta["project"]["dependencies"])


def pip_target(target: Path, py_version: str, requirements: list[str]) -> None:
    """``pip install --target`` of manylinux wheels for another Python than ours."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-compile", "--target", str(target)]
    cmd += ["--python-version", py_version, "--implementation", "cp", "--only-binary=:all:"]
    for plat in ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64"):
        cmd += ["--platform", plat]
    _run([*cmd, *requirements])
    shutil.rmtree(target / "bin", ignore_errors=True)


def pip_layer() -> CachedLayer:
    """The project's runtime dependencies as cp313 manylinux wheels, installed with --target."""
    deps = python_deps()
    key = digest_of(PY_VERSION, "\n".join(deps))
    dirpath, cached = _fresh("pipdeps", key)
    if cached:
        return cached
    root = dirpath / "build"
    pip_target(root / PY_SITE, PY_VERSION, deps)
    return _finish(dirpath, root, keep_rootfs=False, overlay_upper=False)


_THAW_LAUNCHER = """#!/usr/bin/python3
import sys

from thaw.cli import main

sys.exit(main())
"""


def thaw_layer() -> CachedLayer:
    """The thaw packages copied as source (pure Python) plus a ``thaw`` launcher."""
    sources = [REPO / name for name in THAW_SOURCES]
    key = digest_of(*sources)
    dirpath, cached = _fresh("thaw", key)
    if cached:
        return cached
    root = dirpath / "build"
    site = root / PY_SITE
    site.mkdir(parents=True)
    for src in sources:
        shutil.copytree(src, site / src.name, ignore=shutil.ignore_patterns("__pycache__"))
    launcher = root / "usr/local/bin/thaw"
    launcher.parent.mkdir(parents=True)
    launcher.write_text(_THAW_LAUNCHER)
    launcher.chmod(0o755)
    return _finish(dirpath, root, keep_rootfs=False, overlay_upper=False)


def worker_layer() -> CachedLayer:
    key = digest_of(IMAGES_DIR / "worker")
    dirpath, cached = _fresh("worker", key)
    if cached:
        return cached
    root = dirpath / "build"
    (root / "app").mkdir(parents=True)
    shutil.copy2(IMAGES_DIR / "worker" / "app.py", root / "app" / "worker.py")
    return _finish(dirpath, root, keep_rootfs=False, overlay_upper=False)


def engine_pip_layer() -> CachedLayer:
    """torch (CPU) and transformers[serving], as the venv has them, for bookworm's Python."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = list(meta["project"]["optional-dependencies"]["engine"])
    pins = [f"transformers[serving]=={metadata.version('transformers')}"]
    key = digest_of(ENGINE_PY_VERSION, "\n".join(deps), *pins, _TRANSFORMERS_LAUNCHER)
    dirpath, cached = _fresh("engine-pip", key)
    if cached:
        return cached
    root = dirpath / "build"
    pip_target(root / ENGINE_PY_SITE, ENGINE_PY_VERSION, [*deps, *pins])
    # The `transformers` command, as pip would install it for the image's own Python.
    launcher = root / "usr/local/bin/transformers"
    launcher.parent.mkdir(parents=True)
    launcher.write_text(_TRANSFORMERS_LAUNCHER)
    launcher.chmod(0o755)
    return _finish(dirpath, root, keep_rootfs=False, overlay_upper=False)


# As pip writes console scripts: the __main__ guard matters, since multiprocessing's spawn
# re-runs this file in every child (the engine starts its model process that way).
_TRANSFORMERS_LAUNCHER = """#!/usr/bin/python3
import re
import sys

from transformers.cli.transformers import main

if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit(main())
"""


def model_layer() -> CachedLayer:
    """SmolLM2-135M-Instruct (safetensors) at MODEL_PATH."""
    source = engine_model.ensure()
    key = digest_of(source.name)
    dirpath, cached = _fresh("model", key)
    if cached:
        return cached
    root = dirpath / "build"
    shutil.copytree(source, root / MODEL_PATH.lstrip("/"))
    return _finish(dirpath, root, keep_rootfs=False, overlay_upper=False)


# --- images -------------------------------------------------------------------


def compose(name: str, layers: Iterable[CachedLayer], config: oci.ImageConfig) -> dict[str, str]:
    """An OCI layout for one image whose blobs are hard links into the layer cache."""
    layers = list(layers)
    tag = digest_of(*(c.layer.digest for c in layers), json.dumps(dataclasses.asdict(config)))
    ref = f"{REF_PREFIX}/{name}:{tag}"
    layout = cache_root() / "oci" / f"{name}-{tag}"
    if not (layout / "index.json").is_file():
        layout.mkdir(parents=True, exist_ok=True)
        for c in layers:
            oci.link_blob(c.layout, layout, c.layer)
        oci.write_image(layout, ref, [c.layer for c in layers], config)
    return {"ref": ref, "layout": str(layout)}


def build(node_root: Path, which: Iterable[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    which = set(which)
    if "pause" in which:
        out["pause"] = compose(
            "pause", [pause_layer(node_root)], oci.ImageConfig(entrypoint=("/pause",))
        )
    if which & {"worker", "thaw"}:
        base = base_layer(node_root)
    if "worker" in which:
        cfg = oci.ImageConfig(cmd=("python3", "/app/worker.py"), workdir="/app")
        out["worker"] = compose("worker", [base, worker_layer()], cfg)
    if which & {"thaw", "thaw-agent"}:
        layers = [base, apt_layer(base), pip_layer(), thaw_layer()]
        # Same layers, two configs, as docker/webhook.Dockerfile and docker/agent.Dockerfile:
        # the webhook/sidecar image runs unprivileged, the agent image as root.
        env = (*oci.ImageConfig().env, "PYTHONUNBUFFERED=1")
        if "thaw" in which:
            cfg = oci.ImageConfig(entrypoint=("thaw",), env=env, user="65532:65532")
            out["thaw"] = compose("thaw", layers, cfg)
        if "thaw-agent" in which:
            out["thaw-agent"] = compose("thaw-agent", layers, oci.ImageConfig(("thaw",), env=env))
    if "transformers-serve" in which:
        engine_base = base_layer(node_root, "engine", ENGINE_SUITE)
        env = (*oci.ImageConfig().env, "PYTHONUNBUFFERED=1", "HF_HUB_OFFLINE=1")
        cfg = oci.ImageConfig(entrypoint=("transformers", "serve"), env=env)
        layers = [engine_base, engine_pip_layer(), model_layer()]
        out["transformers-serve"] = compose("transformers-serve", layers, cfg)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or reuse) images; print {name: {ref, layout}}")
    b.add_argument("--node-root", type=Path, required=True, help="tree from install.sh")
    b.add_argument("names", nargs="*", default=list(IMAGE_NAMES))
    args = ap.parse_args()
    unknown = set(args.names) - set(IMAGE_NAMES)
    if unknown:
        ap.error(f"unknown image(s): {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        ap.error("building images needs root (debootstrap, chroot, overlay mounts)")
    print(json.dumps(build(args.node_root, args.names), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
