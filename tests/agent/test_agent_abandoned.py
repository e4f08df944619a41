"""A checkpoint given up (``checkpoint-abandoned``) is final: the agent never dumps that pod
and says so once, as an event on the pod.

A real agent (local pod source, real CRIU) serves a real namespace-container pod; the
sidecar that gives up is the real one, with a short checkpoint window. The Kubernetes
side of the report runs against a real kube-apiserver (marker ``apiserver``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from agent.local import read_events, start_checkpoint_pod
from agent.pods import PodRef
from agent.store import Store
from sidecar.hooks import write_signal
from sidecar.server import Limits, Sidecar
from thaw.contract import AbandonReason, InjectedMode, Signal


async def _sidecar_gives_up(control: Path) -> None:
    sidecar = Sidecar(control, InjectedMode.CHECKPOINT.value, limits=Limits(window_s=0.2))
    async with aiohttp.ClientSession() as s:
        while not sidecar.ready:
            await sidecar.step(s)
            await asyncio.sleep(0.02)


def _events(root: Path, pod: str, kind: str) -> list[dict]:
    return [e for e in read_events(root, pod) if e["event"] == kind]


@pytest.mark.criu
def test_abandoned_pod_is_never_checkpointed_and_reported_once(running_agent, local_root, pods):
    pod = start_checkpoint_pod(local_root, "cold", ["sleep", "120"], key="k-cold")
    pods.append(pod)
    asyncio.run(_sidecar_gives_up(pod.control))
    # A late thaw-aware engine (or anyone) asking now must not get its pod paused.
    write_signal(pod.control, Signal.READY_FOR_CHECKPOINT, {"pid": 1})

    deadline = time.monotonic() + 20
    while not _events(local_root, "cold", "CheckpointAbandoned"):
        assert time.monotonic() < deadline, read_events(local_root, "cold")
        time.sleep(0.05)
    time.sleep(30 * running_agent.poll_s)  # many more ticks see the same two files

    abandoned = _events(local_root, "cold", "CheckpointAbandoned")
    assert len(abandoned) == 1, abandoned
    assert abandoned[0]["reason"] == AbandonReason.WARM_WINDOW
    assert "checkpoint window" in abandoned[0]["detail"]
    assert [e["event"] for e in read_events(local_root, "cold")] == ["CheckpointAbandoned"]
    assert not pod.signal_path(Signal.CHECKPOINT_COMPLETE).exists()
    assert Store(local_root / "store").names() == []
    assert pod.box.alive()  # never paused, never touched


@pytest.mark.apiserver
def test_kube_sink_reports_it_as_a_warning_event(kube_plane):
    from kubernetes import client

    from agent.kube import KubeSink
    from tests.support.kube_plane import api_client

    api = api_client(kube_plane)
    core = client.CoreV1Api(api)
    ns = f"abandon-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": ns}})
    body = {
        "metadata": {"name": "llm-0"},
        "spec": {"containers": [{"name": "server", "image": "vllm:1", "command": ["serve"]}]},
    }
    created = core.create_namespaced_pod(ns, body)
    ref = PodRef(created.metadata.uid, ns, "llm-0", InjectedMode.CHECKPOINT, 1, Path("/x"))
    KubeSink(api, "node-a").checkpoint_abandoned(
        ref, AbandonReason.CHECKPOINT_DEADLINE.value, "no checkpoint-complete within 1200s"
    )
    events = core.list_namespaced_event(ns).items
    assert [(e.reason, e.type, e.involved_object.uid) for e in events] == [
        ("CheckpointAbandoned", "Warning", created.metadata.uid)
    ]
    assert "checkpoint-deadline" in events[0].message and "1200s" in events[0].message
    assert events[0].source.component == "thaw-agent" and events[0].source.host == "node-a"
