"""Pods thaw cannot serve: left as written, with a reason, rather than broken by injection.

* ``hostPID`` or ``shareProcessNamespace``: the worker is not PID 1 of a
  namespace of its own, so the agent can neither dump it alone nor restore it
  with its PIDs;
* ``hostNetwork``: the sidecar listens on the fixed ``contract.SIDECAR_PORT``,
  which would then be the node's port (taken, or taken by the next such pod);
* a container (or init container) that declares or probes that port: the
  sidecar would die with EADDRINUSE, since a pod shares one network namespace;
* a worker mount at, inside or above the control folder, under any spelling
  (``/var/run`` is a symlink to ``/run``, ``//`` and ``.`` are the same path).
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from thaw import contract
from webhook.reasons import Reason, Refused

_PROBES = ("readinessProbe", "livenessProbe", "startupProbe")
_SPELLINGS = (("/var/run", "/run"), ("/run", "/var/run"))


def check_pod(spec: dict[str, Any]) -> None:
    """Raise Refused if the pod as a whole cannot be served."""
    for field in ("hostPID", "shareProcessNamespace"):
        if spec.get(field):
            raise Refused(
                Reason.SHARED_PID_NAMESPACE,
                f"spec.{field} is set: the agent dumps and restores a worker only in a "
                "PID namespace of its own",
            )
    if spec.get("hostNetwork"):
        raise Refused(
            Reason.HOST_NETWORK,
            f"spec.hostNetwork is set: the sidecar's port {contract.SIDECAR_PORT} "
            "would be bound on the node",
        )
    for field in ("initContainers", "containers"):
        for c in spec.get(field) or ():
            use = _port_use(c)
            if use:
                raise Refused(
                    Reason.PORT_CONFLICT,
                    f"container {c.get('name')!r} {use} port {contract.SIDECAR_PORT}, "
                    "which the sidecar listens on",
                )


def check_target(target: dict[str, Any]) -> None:
    """Raise Refused if the worker container's mounts overlap the control folder."""
    for m in target.get("volumeMounts") or ():
        path = m.get("mountPath")
        if isinstance(path, str) and overlaps_control_dir(path):
            raise Refused(
                Reason.CONTROL_DIR_CONFLICT,
                f"container {target['name']!r} mounts {m.get('name')!r} at {path!r}, "
                f"which overlaps {contract.CONTROL_DIR}",
            )


def overlaps_control_dir(path: str) -> bool:
    """True if ``path`` is, is inside, or contains the control folder under any spelling."""
    control = _spellings(contract.CONTROL_DIR)
    return any(_related(p, c) for p in _spellings(path) for c in control)


def _spellings(path: str) -> set[str]:
    norm = posixpath.normpath(re.sub("/+", "/", "/" + path))
    names = {norm}
    for old, new in _SPELLINGS:
        if norm == old or norm.startswith(old + "/"):
            names.add(new + norm[len(old) :])
    return names


def _related(a: str, b: str) -> bool:
    return a == b or a == "/" or b == "/" or a.startswith(b + "/") or b.startswith(a + "/")


def _port_use(c: Any) -> str:
    if not isinstance(c, dict):
        return ""
    for p in c.get("ports") or ():
        if isinstance(p, dict) and contract.SIDECAR_PORT in (
            p.get("containerPort"),
            p.get("hostPort"),
        ):
            return "declares"
    for probe in _PROBES:
        handler = c.get(probe)
        if not isinstance(handler, dict):
            continue
        for kind in ("httpGet", "tcpSocket", "grpc"):
            action = handler.get(kind)
            if isinstance(action, dict) and action.get("port") == contract.SIDECAR_PORT:
                return f"has a {probe} on"
    return ""
