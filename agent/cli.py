"""``thaw snapshot ...`` (low-level, one JSON object out) and ``thaw agent ...`` (the daemon)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from agent import loader_standby
from thaw.contract import (
    ENV_RETENTION_MAX_AGE_HOURS,
    ENV_RETENTION_MAX_PER_KEY,
    ENV_SIGNING_KEY_FILE,
    Manifest,
    ManifestError,
)
from thaw.safe_files import read_manifest_bytes

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    from agent.working_set import LEARN_AFTER_S

    snap = sub.add_parser("snapshot", help="checkpoint/restore/verify snapshots (needs root)")
    ssub = snap.add_subparsers(dest="snapshot_command", required=True, metavar="ACTION")

    p = ssub.add_parser("checkpoint", help="dump the process tree rooted at PID into a store")
    p.add_argument("--pid", type=int, required=True, help="root of the tree (host pid)")
    p.add_argument("--out", required=True, help="store dir; the snapshot goes to OUT/<name>")
    p.add_argument("--leave-running", action="store_true", help="keep the tree running")
    p.add_argument("--key", default="", help="snapshot key (default: pid-PID)")
    p.add_argument("--name", default=None, help="snapshot name (default: derived from key)")
    p.add_argument("--image", default="", help="image of the container, for the manifest")
    _add_signing_key(p)
    p.set_defaults(func=cmd_checkpoint)

    p = ssub.add_parser("restore", help="verify, then restore a snapshot folder")
    p.add_argument("dir", help="the snapshot folder (STORE/<name>)")
    p.add_argument("--into", type=int, default=None, help="placeholder pid whose namespaces to use")
    _add_public_key(p)
    p.set_defaults(func=cmd_restore)

    p = ssub.add_parser("verify", help="check manifest, files, checksums and compatibility")
    p.add_argument("dir")
    p.add_argument("--no-compat", action="store_true", help="skip the kernel/arch/CRIU check")
    _add_public_key(p)
    p.set_defaults(func=cmd_verify)

    p = ssub.add_parser("keygen", help="write an Ed25519 signing.key (0600) and signing.pub")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_keygen)

    p = ssub.add_parser("list", help="list the snapshots of a store")
    p.add_argument("store")
    p.set_defaults(func=cmd_list)

    p = ssub.add_parser("inspect", help="print a snapshot's manifest")
    p.add_argument("dir")
    p.set_defaults(func=cmd_inspect)

    p = ssub.add_parser("delete", help="delete a snapshot from a store")
    p.add_argument("store")
    p.add_argument("name")
    p.set_defaults(func=cmd_delete)

    agent = sub.add_parser("agent", help="the node agent")
    asub = agent.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    p = asub.add_parser("run", help="serve checkpoint/restore requests of the pods on a node")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--node", help="node name: watch its pods through the Kubernetes API")
    where.add_argument("--local", metavar="DIR", help="serve DIR/<pod>/ folders, no API server")
    p.add_argument("--store", help="artifact store dir (default: DIR/store with --local)")
    p.add_argument("--kubeconfig", default=None, help="default: in-cluster, then ~/.kube/config")
    p.add_argument("--dump-workers", type=int, default=2)
    p.add_argument("--restore-workers", type=int, default=4)
    p.add_argument(
        "--retention-max-per-key",
        type=int,
        default=None,
        help=f"keep this many snapshots per key (default: ${ENV_RETENTION_MAX_PER_KEY} or all)",
    )
    p.add_argument(
        "--retention-max-age-hours",
        type=float,
        default=None,
        help=f"drop snapshots older than this (default: ${ENV_RETENTION_MAX_AGE_HOURS} or never)",
    )
    p.add_argument(
        "--learn-after",
        type=float,
        default=LEARN_AFTER_S,
        metavar="SECONDS",
        help="sample each restored worker this long after its restore to learn the file pages "
        "later restores read ahead (0: never)",
    )
    p.add_argument(
        "--loader-standby",
        choices=loader_standby.MODES,
        default=loader_standby.DEFAULT_MODE,
        help="keep a GPU region loader waiting with the CUDA driver up, so a restore's loader "
        "starts at once; 'contexts' also keeps each GPU's context up (holds GPU memory)",
    )
    p.add_argument(
        "--no-self-test",
        action="store_true",
        help="skip the start-up socket self-test (`thaw agent doctor`'s dump and restore; "
        "without it a node whose CRIU cannot dump sockets fails every pod one by one)",
    )
    _add_signing_key(p)
    _add_public_key(p, " (default: the signing key's public half)")
    p.set_defaults(func=cmd_agent_run)
    p = asub.add_parser(
        "doctor",
        help="prove the agent can work here: CRIU >= 4.2, `criu check`, and a throw-away "
        "server's TCP, UDP and unix sockets dumped and restored into another network namespace",
    )
    p.add_argument(
        "--version-only",
        action="store_true",
        help="only find CRIU and check its version (what an image build can run)",
    )
    p.set_defaults(func=cmd_doctor)


def _add_signing_key(p: argparse.ArgumentParser) -> None:
    import os

    p.add_argument(
        "--signing-key",
        default=os.environ.get(ENV_SIGNING_KEY_FILE) or None,
        metavar="FILE",
        help=f"sign manifests with this Ed25519 key (default: ${ENV_SIGNING_KEY_FILE}; unset: no)",
    )


def _add_public_key(p: argparse.ArgumentParser, default: str = "") -> None:
    p.add_argument(
        "--public-key",
        default=None,
        metavar="FILE",
        help="refuse snapshots not signed by this Ed25519 key" + default,
    )


def cmd_keygen(args: argparse.Namespace) -> int:
    from agent.signing import SigningError, generate_keypair

    try:
        key, pub = generate_keypair(args.out)
    except (SigningError, OSError) as e:
        return _fail(str(e))
    _emit({"private_key": str(key), "public_key": str(pub)})
    return 0


def _check_signature(folder: Path, public_key: str | None) -> str | None:
    """None when there is no key or the signature holds, else why not."""
    if not public_key:
        return None
    from agent.signing import SigningError, verify_signature
    from agent.store import SnapshotInvalid

    try:
        verify_signature(folder, public_key)
    except (SnapshotInvalid, SigningError) as e:
        return f"refused: {e}"
    return None


def _emit(obj: dict) -> None:
    print(json.dumps(obj, sort_keys=True))


def _fail(message: str, code: int = 1) -> int:
    print(f"thaw: {message}", file=sys.stderr)
    return code


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from agent.checkpoint import CheckpointError, checkpoint
    from agent.criu import CriuMissing
    from agent.signing import SigningError, load_private_key
    from agent.store import Store, StoreError

    try:
        if args.signing_key:
            load_private_key(args.signing_key)  # a bad key fails before anything is frozen
        result = checkpoint(
            args.pid,
            Store(args.out, signing_key=args.signing_key),
            key=args.key,
            name=args.name,
            leave_running=args.leave_running,
            image=args.image,
        )
    except (CheckpointError, CriuMissing, StoreError, SigningError) as e:
        return _fail(str(e))
    _emit(result.summary())
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from agent.criu import CriuMissing
    from agent.restore import RestoreError, placeholder_lock, restore

    problem = _check_signature(Path(args.dir), args.public_key)
    if problem:
        return _fail(problem)
    try:
        if args.into is None:
            result = restore(Path(args.dir))
        else:
            with placeholder_lock(args.into) as fds:
                result = restore(Path(args.dir), into=args.into, hold_fds=fds)
    except (RestoreError, CriuMissing) as e:
        return _fail(str(e))
    _emit(result.summary())
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from agent import criu
    from agent.store import SnapshotInvalid, verify

    version = None
    if not args.no_compat:
        try:
            version = criu.version(criu.find())
        except criu.CriuMissing as e:
            return _fail(f"cannot check compatibility: {e} (use --no-compat)")
    try:
        m = verify(Path(args.dir), version, check_compat=not args.no_compat)
    except SnapshotInvalid as e:
        return _fail(str(e))
    problem = _check_signature(Path(args.dir), args.public_key)
    if problem:
        return _fail(problem)
    signed = {"signed_by": args.public_key} if args.public_key else {}
    _emit({"ok": True, "name": m.name, "files": len(m.files), "bytes": m.total_bytes, **signed})
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from agent.store import Store

    rows = []
    for name, m, problem in Store(args.store).list():
        if m is None:
            rows.append({"name": name, "error": problem})
        else:
            rows.append({"name": name, "key": m.key, "created": m.created, "bytes": m.total_bytes})
    _emit({"snapshots": rows})
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        m = Manifest.from_json(read_manifest_bytes(Path(args.dir)))
    except (OSError, ManifestError) as e:
        return _fail(f"{args.dir}: {e}")
    print(m.to_json(), end="")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from agent.store import Store, StoreError

    try:
        Store(args.store).delete(args.name)
    except StoreError as e:
        return _fail(str(e))
    _emit({"deleted": args.name})
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Each check by name in one JSON object; exit 1 with the first failure on stderr."""
    try:
        from agent import doctor  # loads pycriu, through which the agent drives CRIU
    except ImportError as e:
        return _fail(f"the agent cannot load its CRIU bindings: {e}")
    report = doctor.run(version_only=args.version_only)
    _emit(report.to_dict())
    return 0 if report.ok else _fail(f"doctor: {report.reason}")


def cmd_agent_run(args: argparse.Namespace) -> int:
    from agent.criu import CriuMissing
    from agent.daemon import Agent, run_forever
    from agent.retention import Retention
    from agent.signing import SigningError, load_private_key, load_public_key
    from agent.store import Store

    try:
        retention = Retention.from_env()
    except ValueError as e:
        return _fail(str(e), 2)
    try:  # keys are checked at start, not at the first checkpoint or restore
        signing_key = load_private_key(args.signing_key) if args.signing_key else None
        verify_key = (
            load_public_key(args.public_key)
            if args.public_key
            else (signing_key.public_key() if signing_key else None)
        )
    except SigningError as e:
        return _fail(str(e), 2)
    if args.retention_max_per_key is not None:
        retention = dataclasses.replace(retention, max_per_key=args.retention_max_per_key)
    if args.retention_max_age_hours is not None:
        retention = dataclasses.replace(retention, max_age_hours=args.retention_max_age_hours)
    if args.local:
        from agent.local import LocalPods, LocalSink

        root = Path(args.local)
        source, sink = LocalPods(root), LocalSink(root)
        store = Store(args.store or root / "store", signing_key=args.signing_key)
        node = "local"
    else:
        if not args.store:
            return _fail("--store is required with --node")
        from agent.kube import KubePods, KubeSink, load_api_client

        api = load_api_client(args.kubeconfig)
        source, sink = KubePods(api, args.node), KubeSink(api, args.node)
        store = Store(args.store, signing_key=args.signing_key)
        node = args.node
    try:
        agent = Agent(
            source,
            sink,
            store,
            node=node,
            dump_workers=args.dump_workers,
            restore_workers=args.restore_workers,
            retention=retention,
            verify_key=verify_key,
            learn_after_s=args.learn_after,
            self_test=not args.no_self_test,
        )
    except CriuMissing as e:
        return _fail(str(e))
    loader_standby.enable(args.loader_standby)
    try:
        return run_forever(agent)
    finally:
        loader_standby.disable()
