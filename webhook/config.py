"""Knobs of the injection, shared by the server, ``thaw inject`` and the golden tests.

One frozen value passed into the pure functions, so a mutation depends only
on (pod, snapshot lookup, config) and never on process state.
"""

from __future__ import annotations

import dataclasses
import enum

from thaw.contract import DEFAULT_STORE_CLAIM
from thaw.launch import DEFAULT_RESTORE_TIMEOUT_S

DEFAULT_SIDECAR_IMAGE = "thaw:0.1.0"  # the project image; charts pin their own
ALWAYS_EXCLUDED_NAMESPACES = ("kube-system",)
DEFAULT_MAX_BODY_BYTES = 3 * 1024 * 1024  # the API server's own request size limit


class SidecarMode(enum.StrEnum):
    """Where ``thaw-sidecar`` goes: a native sidecar (init container that keeps
    running, Kubernetes >= 1.29) or a plain extra container for older clusters."""

    NATIVE = "native"
    CONTAINER = "container"


@dataclasses.dataclass(frozen=True)
class InjectConfig:
    sidecar_image: str = DEFAULT_SIDECAR_IMAGE
    sidecar_mode: SidecarMode = SidecarMode.NATIVE
    own_namespace: str = "thaw-system"
    store_claim: str = DEFAULT_STORE_CLAIM
    store_host_path: str = ""  # set: the store is this node folder (hostPath), not the PVC
    restore_timeout_s: int = DEFAULT_RESTORE_TIMEOUT_S

    @property
    def excluded_namespaces(self) -> frozenset[str]:
        return frozenset((*ALWAYS_EXCLUDED_NAMESPACES, self.own_namespace))
