"""The worker's readinessProbe, translated for the sidecar (``contract.WarmProbe``).

The sidecar shares the pod's network namespace but not the worker's image or
filesystem: it runs httpGet and tcpSocket probes the way the kubelet does and
can never run exec or grpc ones. Named ports are resolved here, against the
target container's own ports, as the kubelet resolves them.
"""

from __future__ import annotations

from typing import Any

from thaw import contract
from webhook.reasons import Reason, Refused

# (pod spec field, WarmProbe field, kubelet default, smallest value the API accepts)
TIMING = (
    ("periodSeconds", "period_s", 10, 1),
    ("timeoutSeconds", "timeout_s", 1, 1),
    ("successThreshold", "success_threshold", 1, 1),
    ("failureThreshold", "failure_threshold", 3, 1),
    ("initialDelaySeconds", "initial_delay_s", 0, 0),
)
UNSUPPORTED = ("exec", "grpc")


def warm_probe(container: dict[str, Any]) -> contract.WarmProbe:
    """The target container's readinessProbe for the sidecar; raises Refused if it has none
    the sidecar can run."""
    name = container["name"]
    hook = f"{contract.ANNOTATION_WARM}: {contract.Warm.HOOK}"
    probe = container.get("readinessProbe")
    if probe is None:
        raise Refused(
            Reason.NO_WARM_SIGNAL,
            f"container {name!r} has no readinessProbe to tell when it is warm: add an httpGet "
            f"or tcpSocket readinessProbe, or annotate {hook} if the engine uses sidecar.hooks",
        )
    where = f"container {name!r} readinessProbe"
    if not isinstance(probe, dict):
        raise _bad(f"{where} is not an object")
    for handler in UNSUPPORTED:
        if probe.get(handler) is not None:
            raise Refused(
                Reason.PROBE_UNSUPPORTED,
                f"{where} uses {handler}, which the sidecar cannot run (other image): use "
                f"httpGet or tcpSocket, or annotate {hook} if the engine uses sidecar.hooks",
            )
    timing = {field: _count(probe, key, default, low, where) for key, field, default, low in TIMING}
    http, tcp = probe.get("httpGet"), probe.get("tcpSocket")
    if isinstance(http, dict):
        return contract.WarmProbe(
            port=_port(http.get("port"), container, where),
            scheme=_scheme(http.get("scheme"), where),
            path=_path(http.get("path"), where),
            host=_host(http.get("host"), where),
            headers=_headers(http.get("httpHeaders"), where),
            **timing,
        )
    if isinstance(tcp, dict):
        return contract.WarmProbe(
            port=_port(tcp.get("port"), container, where),
            host=_host(tcp.get("host"), where),
            **timing,
        )
    if http is not None or tcp is not None:
        raise _bad(f"{where} handler is not an object")
    raise Refused(Reason.PROBE_UNSUPPORTED, f"{where} has no httpGet or tcpSocket handler")


def _bad(detail: str) -> Refused:
    return Refused(Reason.BAD_PROBE, detail)


def _shown(value: Any) -> str:
    """``repr`` cut short: details end up in one-line warnings."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _count(probe: dict[str, Any], key: str, default: int, low: int, where: str) -> int:
    value = probe.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise _bad(f"{where} {key} {_shown(value)} is not a whole number >= {low}")
    return value


def _port(raw: Any, container: dict[str, Any], where: str) -> int:
    """An int, or a name among the container's ports (or digits), as the kubelet reads it."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        port = raw
    elif isinstance(raw, str) and raw:
        named = _named_port(container, raw)
        if named is not None:
            port = named
        elif raw.isascii() and raw.isdigit() and len(raw) <= 5:
            port = int(raw)
        else:
            raise _bad(f"{where} port {_shown(raw)} is not among the container's ports")
    else:
        raise _bad(f"{where} port {_shown(raw)} is not a number or a port name")
    if not 0 < port < 65536:
        raise _bad(f"{where} port {port} is out of range")
    return port


def _named_port(container: dict[str, Any], name: str) -> int | None:
    ports = container.get("ports")
    for p in ports if isinstance(ports, list) else ():
        if isinstance(p, dict) and p.get("name") == name:
            number = p.get("containerPort")
            if isinstance(number, int) and not isinstance(number, bool):
                return number
    return None


def _scheme(raw: Any, where: str) -> str:
    if raw is None:
        return "http"
    if isinstance(raw, str) and raw.lower() in contract.HTTP_SCHEMES:
        return raw.lower()
    raise _bad(f"{where} scheme {_shown(raw)} is not HTTP or HTTPS")


def _plain(raw: Any) -> bool:
    """A string with no whitespace or control characters (it goes into a URL)."""
    return isinstance(raw, str) and all(c.isprintable() and not c.isspace() for c in raw)


def _path(raw: Any, where: str) -> str:
    if raw is None or raw == "":
        return "/"
    if not _plain(raw):
        raise _bad(f"{where} path {_shown(raw)} is not a URL path")
    return raw if raw.startswith("/") else f"/{raw}"


def _host(raw: Any, where: str) -> str:
    if raw is None:
        return ""
    if not _plain(raw) or "/" in raw:
        raise _bad(f"{where} host {_shown(raw)} is not a host name or address")
    return raw


def _headers(raw: Any, where: str) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _bad(f"{where} httpHeaders is not a list")
    out = []
    for h in raw:
        name = h.get("name") if isinstance(h, dict) else None
        value = h.get("value", "") if isinstance(h, dict) else None
        if not (name and _plain(name) and ":" not in name) or not (
            isinstance(value, str) and all(c.isprintable() for c in value)
        ):
            raise _bad(f"{where} httpHeaders entry {_shown(h)} is not a header")
        out.append((name, value))
    return tuple(out)
