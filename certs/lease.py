"""Leader election over a coordination.k8s.io/v1 Lease, for ``thaw certs ensure``.

Several webhook replicas may run the reconcile; only the Lease holder
writes the Secret, so two replicas never mint two different CAs at once.
The Lease's resourceVersion makes take-over a compare-and-swap: of two
replicas racing for an expired Lease, one gets a 409 and stays a follower.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

log = logging.getLogger(__name__)


def _micro_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def try_acquire(
    api_client: Any,
    namespace: str,
    name: str,
    identity: str,
    duration_s: int = 60,
    now: dt.datetime | None = None,
) -> bool:
    """Take or renew the Lease; True when ``identity`` holds it afterwards."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.CoordinationV1Api(api_client)
    now = now or dt.datetime.now(dt.UTC)
    try:
        raw = api.read_namespaced_lease(name, namespace, _preload_content=False)
        lease = json.loads(raw.data)
    except ApiException as e:
        if e.status != 404:
            raise
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "holderIdentity": identity,
                "leaseDurationSeconds": duration_s,
                "acquireTime": _micro_time(now),
                "renewTime": _micro_time(now),
                "leaseTransitions": 0,
            },
        }
        try:
            api.create_namespaced_lease(namespace, body)
        except ApiException as e2:
            if e2.status == 409:
                return False  # someone else created it first
            raise
        return True

    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    renewed = _parse_time(spec.get("renewTime")) or _parse_time(spec.get("acquireTime"))
    held_for = int(spec.get("leaseDurationSeconds") or duration_s)
    expired = renewed is None or renewed + dt.timedelta(seconds=held_for) < now
    if holder and holder != identity and not expired:
        return False
    new_spec = dict(spec)
    new_spec.update(
        holderIdentity=identity, leaseDurationSeconds=duration_s, renewTime=_micro_time(now)
    )
    if holder != identity:
        new_spec["acquireTime"] = _micro_time(now)
        new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        log.info("taking lease %s/%s from %r", namespace, name, holder)
    lease["spec"] = new_spec
    return _replace(api, name, namespace, lease)


def release(api_client: Any, namespace: str, name: str, identity: str) -> bool:
    """Give the Lease up if ``identity`` holds it, so the next run need not wait it out."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.CoordinationV1Api(api_client)
    try:
        lease = json.loads(api.read_namespaced_lease(name, namespace, _preload_content=False).data)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    spec = lease.get("spec") or {}
    if spec.get("holderIdentity") != identity:
        return False
    spec.pop("holderIdentity", None)
    spec["leaseDurationSeconds"] = 1
    lease["spec"] = spec
    return _replace(api, name, namespace, lease)


def _replace(api: Any, name: str, namespace: str, lease: dict) -> bool:
    """Write the Lease back; False if someone else wrote it since we read it (409)."""
    from kubernetes.client.exceptions import ApiException

    try:
        api.replace_namespaced_lease(name, namespace, lease)
    except ApiException as e:
        if e.status == 409:
            return False
        raise
    return True
