"""Subcommands of the `thaw` CLI owned by `webhook/`: ``webhook serve`` and ``inject``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from thaw.contract import DEFAULT_STORE_CLAIM
from thaw.launch import DEFAULT_RESTORE_TIMEOUT_S

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``thaw webhook serve`` and ``thaw inject``."""
    from webhook.config import DEFAULT_SIDECAR_IMAGE, SidecarMode
    from webhook.limits import Limits

    def add_inject_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--snapshots", metavar="DIR", help="artifact store with <name>/manifest.json"
        )
        p.add_argument("--sidecar-image", default=DEFAULT_SIDECAR_IMAGE)
        p.add_argument(
            "--sidecar-mode",
            choices=[m.value for m in SidecarMode],
            default=SidecarMode.NATIVE.value,
            help="native: init container with restartPolicy Always (k8s >= 1.29); container: plain",
        )
        p.add_argument(
            "--namespace",
            default="thaw-system",
            help="the webhook's own namespace (never injected)",
        )
        p.add_argument(
            "--store-claim", default=DEFAULT_STORE_CLAIM, help="PVC of the artifact store"
        )
        p.add_argument(
            "--store-host-path",
            default="",
            metavar="PATH",
            help="single-node store: mount this host folder instead of the PVC",
        )
        p.add_argument(
            "--restore-timeout",
            type=int,
            default=DEFAULT_RESTORE_TIMEOUT_S,
            metavar="SECONDS",
            help="restore-mode pods cold-start after this long without a restore",
        )

    webhook = sub.add_parser("webhook", help="the mutating admission webhook")
    wsub = webhook.add_subparsers(dest="webhook_command", required=True, metavar="COMMAND")
    serve = wsub.add_parser("serve", help="serve POST /mutate over TLS")
    serve.add_argument("--listen", default="0.0.0.0:8443", metavar="HOST:PORT")
    serve.add_argument("--tls-cert", required=True, metavar="FILE")
    serve.add_argument("--tls-key", required=True, metavar="FILE")
    serve.add_argument(
        "--in-cluster", action="store_true", help="watch Snapshot objects with the pod's account"
    )
    serve.add_argument("--kubeconfig", help="watch Snapshot objects using this kubeconfig")
    add_limit_options(serve, Limits())
    serve.add_argument(
        "--cert-check-interval", type=float, default=10.0, metavar="SECONDS", help="rotation poll"
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a request body not received within this gets a 408 and the connection is closed",
    )
    serve.add_argument(
        "--keepalive-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="close idle connections, and ones that never finish their headers, after this",
    )
    serve.add_argument("--port-file", help="write the bound port here once listening (tests)")
    add_inject_options(serve)
    serve.set_defaults(func=cmd_serve)

    inj = sub.add_parser(
        "inject", help="apply the webhook's mutation to manifests (YAML to stdout)"
    )
    inj.add_argument("-f", "--filename", required=True, metavar="FILE|-")
    add_inject_options(inj)
    inj.set_defaults(func=cmd_inject)


def add_limit_options(serve: argparse.ArgumentParser, d) -> None:
    """Caps that bound the server's memory and each review's cost (``webhook.limits``)."""
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=d.max_body_bytes,
        metavar="BYTES",
        help="a larger request body gets a 413",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=d.max_connections,
        metavar="N",
        help="TLS connections open at once (each may buffer ~1 MiB); more wait to be accepted",
    )
    serve.add_argument(
        "--max-inflight-reviews",
        type=int,
        default=d.max_reviews,
        metavar="N",
        help="reviews read or processed at once; more get a 429 with Retry-After",
    )
    serve.add_argument(
        "--max-inflight-bytes",
        type=int,
        default=d.max_bytes,
        metavar="BYTES",
        help="request body bytes held at once; more get a 429 with Retry-After",
    )
    serve.add_argument(
        "--large-body-bytes",
        type=int,
        default=d.large_body_bytes,
        metavar="BYTES",
        help="bodies from this size are handled off the event loop, one at a time",
    )
    serve.add_argument(
        "--review-budget-seconds",
        type=float,
        default=d.budget_s,
        metavar="SECONDS",
        help="a review not answered by then is admitted unchanged (over-budget)",
    )
    serve.add_argument(
        "--review-budget-bytes",
        type=int,
        default=d.budget_bytes,
        metavar="BYTES",
        help="a larger review is admitted unchanged without mutating (over-budget)",
    )


def _limits(args: argparse.Namespace):
    from webhook.limits import Limits

    return Limits(
        max_body_bytes=args.max_body_bytes,
        max_connections=args.max_connections,
        max_reviews=args.max_inflight_reviews,
        max_bytes=args.max_inflight_bytes,
        large_body_bytes=args.large_body_bytes,
        budget_s=args.review_budget_seconds,
        budget_bytes=args.review_budget_bytes,
    )


def _flag_words(problem: str) -> str:
    """A Limits problem in the words of the flags that set it."""
    flags = {
        "max_body_bytes": "--max-body-bytes",
        "max_connections": "--max-connections",
        "max_reviews": "--max-inflight-reviews",
        "max_bytes": "--max-inflight-bytes",
        "budget_s": "--review-budget-seconds",
    }
    for name, flag in flags.items():
        problem = problem.replace(name, flag)
    return problem


def _config(args: argparse.Namespace):
    from webhook.config import InjectConfig, SidecarMode

    if args.restore_timeout <= 0:
        raise SystemExit("thaw: --restore-timeout must be positive")
    return InjectConfig(
        sidecar_image=args.sidecar_image,
        sidecar_mode=SidecarMode(args.sidecar_mode),
        own_namespace=args.namespace,
        store_claim=args.store_claim,
        store_host_path=args.store_host_path,
        restore_timeout_s=args.restore_timeout,
    )


def _snapshot_view(args: argparse.Namespace):
    from webhook.snapshots import ClusterSnapshots, DirectorySnapshots, NoSnapshots

    if getattr(args, "in_cluster", False) or getattr(args, "kubeconfig", None):
        from kubernetes import client, config

        if args.kubeconfig:
            api = config.new_client_from_config(config_file=args.kubeconfig)
        else:
            config.load_incluster_config()
            api = client.ApiClient()
        view = ClusterSnapshots(api)
        view.start()
        return view
    if args.snapshots:
        return DirectorySnapshots(args.snapshots)
    return NoSnapshots()


def cmd_serve(args: argparse.Namespace) -> int:
    from certs.files import ServingCert
    from webhook.server import make_app, parse_listen, serve

    try:
        host, port = parse_listen(args.listen)
    except ValueError as e:
        print(f"thaw: {e}", file=sys.stderr)
        return 2
    limits = _limits(args)
    for problem in limits.problems():
        print(f"thaw: {_flag_words(problem)}", file=sys.stderr)
        return 2
    if args.body_timeout <= 0 or args.keepalive_timeout <= 0:
        print("thaw: --body-timeout and --keepalive-timeout must be positive", file=sys.stderr)
        return 2
    config = _config(args)
    cert = ServingCert(args.tls_cert, args.tls_key)
    if not cert.reload_if_changed():
        log.warning("starting without a serving certificate; /readyz fails until one loads")
    app = make_app(
        config,
        _snapshot_view(args),
        serving_cert=cert,
        limits=limits,
        cert_check_interval_s=args.cert_check_interval,
        body_read_timeout_s=args.body_timeout,
    )
    asyncio.run(
        serve(
            app,
            host,
            port,
            cert,
            ready_file=args.port_file or "",
            keepalive_timeout_s=args.keepalive_timeout,
        )
    )
    return 0


def cmd_inject(args: argparse.Namespace) -> int:
    import yaml

    from webhook.offline import inject_stream

    try:
        if args.filename == "-":
            text = sys.stdin.read()
        else:
            with open(args.filename, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        print(f"thaw: cannot read {args.filename}: {e}", file=sys.stderr)
        return 1
    try:
        out, decisions = inject_stream(text, _config(args), _snapshot_view(args))
    except yaml.YAMLError as e:
        detail = " ".join(str(e).split())  # one line: PyYAML's marks span several
        print(f"thaw: {args.filename} is not valid YAML: {detail}", file=sys.stderr)
        return 1
    sys.stdout.write(out)
    for label, decision in decisions:
        print(f"{label}: {decision.message()}", file=sys.stderr)
    return 0
