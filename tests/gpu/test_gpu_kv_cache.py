"""The VMM-backed KV pool on a real GPU: release frees device memory, remap keeps addresses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, torch
    from cuda.bindings import driver as d
    from sidecar import hooks
    from sidecar.kv_cache import VmmPool

    torch.cuda.init(); torch.zeros(1, device="cuda")
    free = lambda: d.cuMemGetInfo()[1]
    before = free()
    pool = VmmPool(1 << 30).register_hooks()
    resets = []
    pool.on_remap.append(lambda: resets.append(1))
    k = pool.tensor((256, 1024, 1024), torch.float16)   # 512 MiB view
    v = pool.tensor((1000,), torch.float32)
    k.fill_(1.5); v.fill_(2.0)
    ok_values = bool(k.float().mean() == 1.5 and v.sum() == 2000.0)
    mapped = before - free()
    ptr = pool.ptr
    hooks._run(hooks._quiesce, "quiesce")
    released = free() - (before - mapped)
    hooks._run(hooks._resume, "resume")
    k.fill_(3.0)
    print(json.dumps({
        "ok_values": ok_values, "mapped": mapped, "released": released,
        "same_ptr": pool.ptr == ptr == k.data_ptr(), "after_remap": float(k.float().mean()),
        "resets": len(resets), "nbytes": pool.nbytes, "used": pool.used_bytes,
    }))
    try:
        pool.tensor((1 << 30,), torch.float32)
    except Exception as e:
        print(json.dumps({"exhausted": str(e)}))
    """
)


def test_release_and_remap_keep_the_address() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    first, second = (json.loads(line) for line in out.stdout.strip().splitlines()[-2:])
    assert first["ok_values"] and first["same_ptr"]
    assert first["mapped"] >= first["nbytes"]  # the pool's memory really was taken...
    assert first["released"] >= first["nbytes"] * 0.95  # ...and really given back on quiesce
    assert first["after_remap"] == 3.0 and first["resets"] == 1  # remap ran on_remap once
    assert "KV pool exhausted" in second["exhausted"]
