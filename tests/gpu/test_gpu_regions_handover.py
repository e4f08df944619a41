"""The agent's region loader on a real GPU: weights filled in another process, handed over.

A worker releases its weights (``sidecar.weights``) and describes them in the
control dir; ``python -m agent.gpu_regions`` (a separate process, as the agent
runs it) fills a new allocation from the files with O_DIRECT and passes it
over the control dir's socket; the worker maps it at its old addresses. The
outputs must be bit-identical, and stay so after the loader has exited (the
memory belongs to the worker now). The failure paths that need no GPU are in
tests/agent/test_gpu_regions.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from thaw.contract import ENV_CONTROL_DIR, GPU_REGIONS_FILE, GPU_REGIONS_SOCKET, GpuRegions

REPO = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent(
    """
    import json, sys, time, torch
    from pathlib import Path
    from safetensors.torch import save_file
    from cuda.bindings import driver as d
    from sidecar import hooks
    from sidecar.weights import ReleasableWeights

    tmp, control = Path(sys.argv[1]), Path(sys.argv[2])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4096, 8192), torch.nn.Linear(8192, 4096)).cuda()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp / "m.safetensors"))
    x = torch.randn(8, 4096, device="cuda")
    want = net(x)
    w = ReleasableWeights(net, [tmp / "m.safetensors"], readers=4)
    ptrs = [p.data_ptr() for p in net.parameters()]
    w.release()  # quiesce: regions file written, memory gone
    (control / "released").write_text("")
    sock = control / sys.argv[3]
    while not sock.exists():
        time.sleep(0.01)
    w.reload()
    out = {"source": w.last_source, "same": torch.equal(net(x), want),
           "ptrs": ptrs == [p.data_ptr() for p in net.parameters()]}
    (control / "adopted").write_text("")
    while not (control / "loader-gone").exists():  # the exporter exits: memory must stay ours
        time.sleep(0.01)
    out["same_after_loader_exit"] = torch.equal(net(x), want)
    w.release()
    w.reload()  # no loader any more: from the files
    out["second_source"] = w.last_source
    out["same_from_files"] = torch.equal(net(x), want)
    print(json.dumps(out))
    """
)


def _loader(spec: Path, control: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.gpu_regions", "--spec", str(spec), "--control",
         str(control), "--stats", str(control.parent / "stats.json"), "--timeout", "60", *extra],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _wait(path: Path, proc: subprocess.Popen) -> None:
    import time

    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


@pytest.mark.parametrize(
    "extra",
    [
        (),
        ("--chunk-mib", "4", "--cached-mib", "64"),
        ("--chunk-mib", "4", "--cached-mib", "64", "--direct-inflight", "4"),
        ("standby:on",),
        ("standby:contexts", "--chunk-mib", "4", "--cached-mib", "64"),
    ],
    ids=[
        "direct", "first-64MiB-from-page-cache", "then-one-sequential-stream",
        "agents-standby", "agents-standby-with-its-context",
    ],
)  # fmt: skip
def test_loader_fills_and_hands_over(tmp_path: Path, extra: tuple[str, ...]) -> None:
    control = tmp_path / "control"
    control.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), ENV_CONTROL_DIR: str(control)}
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path), str(control), GPU_REGIONS_SOCKET],
        cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _wait(control / "released", worker)
    spec = GpuRegions.from_json((control / GPU_REGIONS_FILE).read_text())
    assert spec.regions[0].source_bytes == (4096 * 8192 * 2 + 8192 + 4096) * 4
    if extra and extra[0].startswith("standby:"):  # the agent's waiting loader, driver up
        from agent import loader_standby

        standby = loader_standby.LoaderStandby.for_mode(extra[0].removeprefix("standby:"))
        standby.start()
        try:
            report = standby.wait_ready()
            assert report["cuda"] == "initialised", report
            assert len(report.get("contexts", [])) == (1 if extra[0].endswith("contexts") else 0)
            spec_file = control / GPU_REGIONS_FILE
            loader = loader_standby.spawn(
                ["--spec", str(spec_file), "--control", str(control),
                 "--stats", str(tmp_path / "stats.json"), "--timeout", "60", *extra[1:]],
                [], standby,
            )  # fmt: skip
            assert standby.served == 1
        finally:
            standby.close()
    else:
        loader = _loader(control / GPU_REGIONS_FILE, control, *extra)
    _wait(control / "adopted", worker)
    assert loader.wait(timeout=60) == 0, loader.communicate()
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["ok"] and stats["bytes"] >= spec.regions[0].source_bytes
    assert not (control / GPU_REGIONS_SOCKET).exists()  # the loader cleans up its socket
    (control / "loader-gone").write_text("")
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res == {
        "source": "loader", "same": True, "ptrs": True, "same_after_loader_exit": True,
        "second_source": "files", "same_from_files": True,
    }  # fmt: skip
