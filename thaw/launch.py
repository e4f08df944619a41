"""Shell launchers the webhook puts in front of the user's command.

Both run in the *user's* image, so they are POSIX ``sh`` scripts using only
builtins where it matters; the original argv travels as positional
parameters, so nothing is re-quoted.

checkpoint mode -- ``checkpoint_wrapper``: a tiny init stays PID 1 and starts
    the worker as a child after burning ``PID_OFFSET`` PIDs. The checkpointed
    tree (rooted at the worker) therefore never holds PID 1 or the low PIDs
    that the restore placeholder and its timer take, so a restore into the
    placeholder's PID namespace finds its PIDs free.

restore mode -- ``restore_placeholder``: PID 1 of the restore container.
    It waits (one ``sleep`` child, no per-poll forks, so low PIDs stay
    quiet) for the agent to write ``restore-complete`` or ``restore-failed``
    and to send SIGUSR1. On completion it mirrors the restored worker's
    lifetime and forwards SIGTERM to it; on failure or timeout it ``exec``s
    the original command: a cold start, never a stuck pod.
"""

from __future__ import annotations

from collections.abc import Sequence

from thaw.contract import CONTROL_DIR, ENV_CONTROL_DIR, ENV_RESTORE_TIMEOUT, Signal

SHELL = "/bin/sh"
PID_OFFSET = 300  # PIDs burned before the worker starts (see module doc)
DEFAULT_RESTORE_TIMEOUT_S = 600
WRAPPER_ARGV0 = "thaw-init"
PLACEHOLDER_ARGV0 = "thaw-placeholder"

_WRAPPER = f"""\
i=0; while [ "$i" -lt {PID_OFFSET} ]; do : & i=$((i+1)); done; wait
"$@" &
worker=$!
trap 'kill -TERM "$worker" 2>/dev/null' TERM INT
while :; do
  wait "$worker"; rc=$?
  kill -0 "$worker" 2>/dev/null || exit "$rc"
done
"""

_PLACEHOLDER = f"""\
d="${{{ENV_CONTROL_DIR}:-{CONTROL_DIR}}}"
done_f="$d/{Signal.RESTORE_COMPLETE.value}"; fail_f="$d/{Signal.RESTORE_FAILED.value}"
trap 'woken=1' USR1
sleep "${{{ENV_RESTORE_TIMEOUT}:-{DEFAULT_RESTORE_TIMEOUT_S}}}" & timer=$!
while [ ! -e "$done_f" ] && [ ! -e "$fail_f" ]; do
  kill -0 "$timer" 2>/dev/null || break
  wait "$timer"
done
kill "$timer" 2>/dev/null
if [ -e "$fail_f" ] || [ ! -e "$done_f" ]; then
  echo "thaw: restore did not complete; cold start" >&2
  exec "$@"
fi
pid=$(sed -n 's/.*"pid": *\\([0-9][0-9]*\\).*/\\1/p' "$done_f")
echo "thaw: restored worker pid $pid" >&2
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
alive() {{  # a reparented worker that exited stays a zombie: treat Z/X as gone
  read -r st < "/proc/$pid/stat" 2>/dev/null || return 1
  case "${{st##*) }}" in Z*|X*) return 1;; esac
}}
while alive; do sleep 1 & wait $!; done
exit 0
"""


def checkpoint_wrapper(argv: Sequence[str]) -> list[str]:
    """Container ``command`` that runs ``argv`` under the PID-offset init."""
    return [SHELL, "-c", _WRAPPER, WRAPPER_ARGV0, *argv]


def restore_placeholder(argv: Sequence[str]) -> list[str]:
    """Container ``command`` that waits for a restore and falls back to ``argv``."""
    return [SHELL, "-c", _PLACEHOLDER, PLACEHOLDER_ARGV0, *argv]


def original_argv(command: Sequence[str]) -> list[str] | None:
    """Recover the user's argv from a wrapped command (None if not wrapped).

    Lets the mutation stay idempotent and lets ``thaw inject`` unwrap.
    """
    wrapped = len(command) >= 4 and command[0] == SHELL and command[1] == "-c"
    if wrapped and command[3] in (WRAPPER_ARGV0, PLACEHOLDER_ARGV0):
        return list(command[4:])
    return None
