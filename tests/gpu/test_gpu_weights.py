"""Releasable weights on a real GPU: released memory is freed, reload restores the bytes."""

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
    import json, sys, torch
    from pathlib import Path
    from safetensors.torch import save_file
    from cuda.bindings import driver as d
    from sidecar import hooks
    from sidecar.weights import ReleasableWeights, WeightsError

    tmp = Path(sys.argv[1])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4096, 8192), torch.nn.Linear(8192, 4096)).cuda()
    net.register_buffer("scale", torch.ones(3, device="cuda"))  # not in the file: stays put
    save_file({k: v.contiguous() for k, v in net.state_dict().items() if k != "scale"},
              str(tmp / "model.safetensors"))
    x = torch.randn(8, 4096, device="cuda")
    want = net(x)
    free = lambda: d.cuMemGetInfo()[1]
    w = ReleasableWeights(net, [tmp / "model.safetensors"], readers=4).register_hooks()
    ptrs = [p.data_ptr() for p in net.parameters()]
    before = free()
    hooks._run(hooks._quiesce, "quiesce")
    freed = free() - before
    hooks._run(hooks._resume, "resume")
    same = torch.equal(net(x), want)
    out = {"bytes": w.bytes, "freed": freed, "same": same, "names": len(w.names),
           "ptrs": ptrs == [p.data_ptr() for p in net.parameters()]}
    (tmp / "bad.safetensors").write_bytes(b"\\x05")
    try:
        ReleasableWeights(net, [tmp / "bad.safetensors"])
    except WeightsError as e:
        out["bad"] = str(e)
    print(json.dumps(out))
    """
)


def test_release_and_reload_from_safetensors(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True,
        cwd=REPO, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["names"] == 4  # two weights, two biases
    assert res["bytes"] == (4096 * 8192 * 2 + 8192 + 4096) * 4
    assert res["freed"] >= res["bytes"] * 0.95  # the weights' memory really went away
    assert res["same"] and res["ptrs"]  # same outputs, same addresses after reload
    assert "too short" in res["bad"]
