"""Subcommands of the `thaw` CLI owned by `certs/`: ``certs generate`` and ``certs ensure``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``thaw certs generate`` and ``thaw certs ensure``."""
    certs = sub.add_parser("certs", help="webhook TLS certificates")
    csub = certs.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")

    gen = csub.add_parser("generate", help="write ca.crt, tls.crt, tls.key for the given hosts")
    gen.add_argument(
        "--hosts", required=True, help="comma-separated DNS names and IPs (become SANs)"
    )
    gen.add_argument("--out", required=True, metavar="DIR")
    gen.add_argument(
        "--days", type=int, default=365, help="serving certificate lifetime (1 to 3650)"
    )
    gen.set_defaults(func=cmd_generate)

    ens = csub.add_parser(
        "ensure", help="in-cluster: create/rotate the cert Secret and patch the caBundle"
    )
    ens.add_argument("--secret", required=True, metavar="NAMESPACE/NAME")
    ens.add_argument("--webhook-config", metavar="NAME", help="MutatingWebhookConfiguration")
    ens.add_argument(
        "--service", metavar="NAME", help="webhook Service (in the Secret's namespace)"
    )
    ens.add_argument("--hosts", default="", help="extra comma-separated names/IPs")
    ens.add_argument("--leader-elect", action="store_true", help="only the Lease holder writes")
    ens.add_argument("--lease", default="thaw-certs", help="Lease name (Secret's namespace)")
    ens.add_argument("--identity", default="", help="leader identity (default: hostname-pid)")
    ens.add_argument(
        "--interval", type=float, default=0, metavar="SECONDS", help="repeat forever (0: once)"
    )
    ens.add_argument("--kubeconfig", help="default: in-cluster service account")
    ens.set_defaults(func=cmd_ensure)


def _hosts(text: str) -> list[str]:
    return [h.strip() for h in text.split(",") if h.strip()]


def cmd_generate(args: argparse.Namespace) -> int:
    import datetime as dt

    from certs import files, pki

    if not 1 <= args.days <= pki.MAX_SERVING_DAYS:
        print(f"thaw: --days must be 1 to {pki.MAX_SERVING_DAYS}, not {args.days}", file=sys.stderr)
        return 2
    try:
        pki.split_hosts(_hosts(args.hosts))  # every name checked before any key is made
        ca_cert, ca_key = pki.make_ca()
        tls_cert, tls_key = pki.make_serving(
            ca_cert, ca_key, _hosts(args.hosts), lifetime=dt.timedelta(days=args.days)
        )
    except pki.CertError as e:
        print(f"thaw: {e}", file=sys.stderr)
        return 2
    try:
        written = files.write_bundle(args.out, pki.Bundle(ca_cert, ca_key, tls_cert, tls_key))
    except OSError as e:
        print(f"thaw: cannot write to {args.out}: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


def cmd_ensure(args: argparse.Namespace) -> int:
    from kubernetes import client, config

    from certs import incluster, lease, pki, rotation

    namespace, _, name = args.secret.partition("/")
    if not namespace or not name:
        print("thaw: --secret must be NAMESPACE/NAME", file=sys.stderr)
        return 2
    hosts = (rotation.service_hosts(args.service, namespace) if args.service else []) + _hosts(
        args.hosts
    )
    if not hosts:
        print("thaw: give --service and/or --hosts", file=sys.stderr)
        return 2
    if args.kubeconfig:
        api = config.new_client_from_config(config_file=args.kubeconfig)
    else:
        config.load_incluster_config()
        api = client.ApiClient()
    identity = args.identity or f"{socket.gethostname()}-{os.getpid()}"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the finally: release the Lease
    leading = False
    try:
        while True:
            try:
                if args.leader_elect:
                    leading = lease.try_acquire(api, namespace, args.lease, identity)
                if args.leader_elect and not leading:
                    log.info("not the leader for %s/%s; nothing to do", namespace, args.lease)
                else:
                    result = incluster.reconcile(api, namespace, name, hosts, args.webhook_config)
                    log.info("certificates: %s", result.why)
            except pki.CertError as e:
                print(f"thaw: {e}", file=sys.stderr)
                return 2
            except Exception as e:  # API hiccup: report, and retry when looping
                log.warning("certificate reconcile failed: %s", e)
                if not args.interval:
                    return 1
            if not args.interval:
                return 0
            time.sleep(args.interval)
    finally:
        if leading:
            try:
                lease.release(api, namespace, args.lease, identity)
            except Exception as e:
                log.warning("could not release lease %s/%s: %s", namespace, args.lease, e)
