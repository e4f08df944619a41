"""``thaw demo``: the whole flow locally on an embedded default, no cluster.

The default engine is a real one, an unmodified ``transformers serve`` with a
real model (:mod:`thaw.demo_llm`). ``--engine sample`` runs thaw's sample
worker instead, whose state and warm-up are sized by flags; what a cluster
does, played on this machine with the real parts:

1. the admission webhook (a real ``thaw webhook serve`` over TLS on loopback,
   certificates from ``certs``) sees the first replica of a sample Deployment,
   finds no snapshot, and rewrites it for checkpoint mode;
2. that pod runs as a real namespace container; the sample worker warms up
   (state in memory + a compile-like hash chain) and asks for a checkpoint;
   the local agent dumps it with CRIU and publishes a snapshot, and the worker
   keeps serving;
3. the webhook sees the second replica, finds the Ready snapshot, and rewrites
   it for restore mode; the agent restores the worker into the placeholder
   container, with the page cache dropped first;
4. a table compares cold start and restore, and both replicas are checked to
   hold the same state.

Needs root (CRIU, namespaces); without it only the webhook part runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from thaw import contract
from thaw.demo_common import (
    CONTAINER,
    NAMESPACE,
    admit,
    admit_restore,
    describe,
    drop_page_cache,
    target_argv,
)
from thaw.demo_common import webhook as local_webhook

SEED = "thaw-demo"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole flow locally (no cluster)")
    p.add_argument(
        "--engine",
        choices=("llm", "sample"),
        default="llm",
        help="llm: transformers serve with SmolLM2-135M-Instruct (default); sample: thaw's worker",
    )
    p.add_argument("--state-mb", type=int, default=1024, help="sample worker memory state (MB)")
    p.add_argument(
        "--warmup-rounds", type=int, default=20000, help="compile-like warm-up work (1 MB hashes)"
    )
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.set_defaults(func=run)


def sample_pod(args: argparse.Namespace) -> dict[str, Any]:
    """A replica of the sample Deployment as the API server hands it to the webhook."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "sample-worker-7d9f8b-",
            "namespace": NAMESPACE,
            "labels": {
                "app": "sample-worker",
                contract.LABEL_ENABLED: contract.LABEL_ENABLED_VALUE,
            },
            # The sample worker announces itself (ready-for-checkpoint): no probe needed.
            "annotations": {contract.ANNOTATION_WARM: contract.Warm.HOOK.value},
        },
        "spec": {
            "containers": [
                {
                    "name": CONTAINER,
                    "image": "thaw/sample-worker:demo",
                    "command": [sys.executable, "-m", "thaw.sample_worker"],
                    "args": [
                        f"--state-mb={args.state_mb}",
                        f"--warmup-rounds={args.warmup_rounds}",
                        f"--seed={SEED}",
                    ],
                    "resources": {"requests": {"cpu": "1", "memory": f"{args.state_mb * 2}Mi"}},
                }
            ]
        },
    }


def run(args: argparse.Namespace) -> int:
    if not args.verbose:  # the agent's per-phase logs are for -v; the demo prints its own story
        logging.getLogger().setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="thaw-demo-"))
    store = work / "local" / "store"
    store.mkdir(parents=True)
    try:
        return _run(args, work, store)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path, store: Path) -> int:
    if args.engine == "llm":
        return _run_llm(args, work, store)
    pod = sample_pod(args)
    print(f"thaw demo: sample worker with {args.state_mb} MB of state, {args.warmup_rounds} rounds")
    with local_webhook(work, store) as (port, ctx):
        first = admit(port, ctx, pod, "replica-1")
        print(f"[webhook] replica 1 -> {describe(first)}")
        if os.geteuid() != 0:
            print("not root: CRIU and namespaces need root; stopping after the webhook part")
            return 0
        key = first["metadata"]["annotations"][contract.ANNOTATION_SNAPSHOT_KEY]
        result = _checkpoint_and_restore(args, work, port, ctx, pod, key)
    cache = "page cache dropped first" if result["cache_dropped"] else "page cache NOT dropped"
    print_table(
        [
            ("cold start (to warm)", f"{result['cold_s']:.2f} s"),
            ("checkpoint (agent)", f"{result['checkpoint_s']:.2f} s"),
            (f"restore (to first answer, {cache})", f"{result['restore_s']:.2f} s"),
            ("speed-up", f"{result['cold_s'] / result['restore_s']:.1f}x"),
            ("snapshot size", f"{result['snapshot_bytes'] / 1e6:.0f} MB"),
            ("restored state == source state", "yes" if result["state_match"] else "NO"),
        ]
    )
    return 0 if result["state_match"] else 1


def _run_llm(args: argparse.Namespace, work: Path, store: Path) -> int:
    print("thaw demo: transformers serve (unmodified) with SmolLM2-135M-Instruct")
    with local_webhook(work, store) as (port, ctx):
        if os.geteuid() != 0:
            print("not root: CRIU and namespaces need root; stopping before the engine starts")
            return 0
        from thaw.demo_llm import run_llm  # needs CRIU's bindings, which only root can use

        result = run_llm(args, work, port, ctx)
    print_table(result["rows"])
    return 0 if result["ok"] else 1


def _checkpoint_and_restore(
    args: argparse.Namespace,
    work: Path,
    port: int,
    ctx: ssl.SSLContext,
    pod: dict[str, Any],
    key: str,
) -> dict[str, Any]:
    from agent import criu
    from agent.local import start_agent, start_checkpoint_pod, start_restore_pod
    from agent.store import Store
    from sidecar.restore_init import run_restore_init
    from thaw import sample_worker

    criu.require(check_kernel=True)
    root = work / "local"
    agent = start_agent(root, work / "local" / "store")
    pods = []
    try:
        argv = target_argv(admit(port, ctx, pod, "replica-1"))
        t0 = time.monotonic()
        src = start_checkpoint_pod(
            root, "replica-1", argv, key=key, image="demo", namespace=NAMESPACE
        )
        pods.append(src)
        src.wait_signal(contract.Signal.READY_FOR_CHECKPOINT, 600)
        cold_s = time.monotonic() - t0
        print(f"[pod] replica 1 warm after {cold_s:.2f} s (cold start); agent checkpoints it")
        done = json.loads(src.wait_signal(contract.Signal.CHECKPOINT_COMPLETE, 600))
        # as the pod sees it: ready-for-checkpoint written until checkpoint-complete appears
        # (the manifest's timings hold byte counts and overlapping parts: not a sum)
        ckpt_s = time.monotonic() - t0 - cold_s
        if not done.get("ok"):
            raise RuntimeError(f"checkpoint failed: {done}")
        manifest = Store(root / "store").manifest(done["snapshot"])
        print(f"[agent] snapshot {done['snapshot']} Ready: {manifest.total_bytes / 1e6:.0f} MB")

        second, snapshot = admit_restore(port, ctx, pod, "replica-2")
        cache_dropped = drop_page_cache()
        t0 = time.monotonic()
        # The pod is on the node (the agent sees it and beats) before its thaw-restore
        # init step runs: node check, agent heartbeat, prefetch, restore-requested.
        dst = start_restore_pod(
            root,
            "replica-2",
            target_argv(second),
            key=key,
            snapshot=snapshot,
            image="demo",
            namespace=NAMESPACE,
            request=False,
        )
        pods.append(dst)
        init = run_restore_init(root / "store", snapshot, dst.control)
        print(f"[thaw-restore] {init.signal.value}: {json.dumps(init.payload)}")
        done = dst.wait_signal(
            contract.Signal.RESTORE_COMPLETE, 600, unless=contract.Signal.RESTORE_FAILED
        )
        complete = json.loads(done)
        answer = sample_worker.query(str(dst.control), "warmup", timeout=30)
        restore_s = time.monotonic() - t0
        print(f"[agent] replica 2 restored as pid {complete['pid']} in {restore_s:.2f} s")

        want = sample_worker.query(str(src.control), "state", timeout=60)
        got = sample_worker.query(str(dst.control), "state", timeout=60)
        src_warm = sample_worker.query(str(src.control), "warmup")
        return {
            "cold_s": cold_s,
            "checkpoint_s": ckpt_s,
            "restore_s": restore_s,
            "snapshot_bytes": manifest.total_bytes,
            "cache_dropped": cache_dropped,
            "state_match": got == want and answer == src_warm,
        }
    finally:
        for p in pods:
            p.stop()
        agent.stop(wait=True)


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print()
    vwidth = max(len(v) for _, v in rows)
    print(f"| {'':{width}} | {'':>{vwidth}} |")
    print(f"|{'-' * (width + 2)}|{'-' * (vwidth + 1)}:|")
    for k, v in rows:
        print(f"| {k:{width}} | {v:>{vwidth}} |")
