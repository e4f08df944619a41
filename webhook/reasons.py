"""Every outcome of the webhook's decision, by name.

The server counts them in metrics and returns them to the API server as a
warning and an audit annotation, so "why was my pod not thawed?" has an
answer without logs. Kept apart from ``decision`` so each check that names
a reason (``warm``, ``probe``) can live in its own module.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    # Injected.
    CHECKPOINT_NO_SNAPSHOT = "checkpoint-no-snapshot"  # auto mode, nothing to restore yet
    CHECKPOINT_FORCED = "checkpoint-forced"  # mode: checkpoint
    RESTORE_SNAPSHOT_READY = "restore-snapshot-ready"
    # Skipped: pod left exactly as it is.
    NOT_A_POD = "not-a-pod"
    NOT_CREATE = "not-create"
    NO_OPT_IN = "no-opt-in"
    MODE_OFF = "mode-off"
    UNKNOWN_MODE = "unknown-mode"
    EXCLUDED_NAMESPACE = "excluded-namespace"
    ALREADY_INJECTED = "already-injected"
    MALFORMED_POD = "malformed-pod"
    CONTAINER_NOT_FOUND = "container-not-found"
    NO_COMMAND = "no-command"
    NAME_CONFLICT = "name-conflict"
    CONTROL_DIR_CONFLICT = "control-dir-conflict"  # a worker mount at, in or above /var/run/thaw
    SHARED_PID_NAMESPACE = "shared-pid-namespace"  # hostPID or shareProcessNamespace
    HOST_NETWORK = "host-network"  # the sidecar's port would be the node's
    PORT_CONFLICT = "port-conflict"  # a container already uses the sidecar's port
    BAD_ANNOTATION = "bad-annotation"  # a thaw.dev/ warm, engine, path or window value
    NO_WARM_SIGNAL = "no-warm-signal"  # no readinessProbe and no thaw.dev/warm: hook
    PROBE_UNSUPPORTED = "probe-unsupported"  # exec or grpc: the sidecar cannot run it
    BAD_PROBE = "bad-probe"  # e.g. a named port the container does not declare
    NO_READY_SNAPSHOT = "no-ready-snapshot"  # mode: restore, nothing Ready
    SNAPSHOTS_NOT_SYNCED = "snapshots-not-synced"  # cache never listed: cannot tell
    INTERNAL_ERROR = "internal-error"  # a bug; the pod is still admitted unchanged


INJECTING = frozenset(
    {Reason.CHECKPOINT_NO_SNAPSHOT, Reason.CHECKPOINT_FORCED, Reason.RESTORE_SNAPSHOT_READY}
)


class Refused(Exception):
    """Raised by a check deep in the pod: skip it for ``reason``, saying ``detail``."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail
