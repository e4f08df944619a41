"""The node agent: watches thaw pods' control dirs and checkpoints or restores them.

One agent serves every pod on its node. Signals are polled (cheap stats);
each piece of work runs as its own task: dumps in a small pool, restores in
a separate pool, so a slow dump never delays a restore (a restore is on a
pod's start-up path; a dump is not). Every restore ends with
``restore-complete`` or ``restore-failed`` plus SIGUSR1 to the placeholder,
never silence: on any error the placeholder execs the original command.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent import criu, doctor, leftovers, procfs, retries, working_set
from agent.checkpoint import CheckpointError, checkpoint
from agent.heartbeat import Heartbeat
from agent.pods import PodRef, PodSource, SnapshotSink, open_control_file
from agent.restore import RestoreError, restore
from agent.retention import Retention, prune
from agent.signing import Ed25519PublicKey, authorize_restore
from agent.steps import Step
from agent.store import SnapshotInvalid, Store, StoreError, new_name, verify
from agent.working_set import LEARN_AFTER_S
from thaw.contract import (
    AGENT_LOCK_FILE,
    InjectedMode,
    Signal,
    Source,
)

log = logging.getLogger(__name__)


class Agent:
    def __init__(
        self,
        source: PodSource,
        sink: SnapshotSink,
        store: Store,
        *,
        node: str = "",
        dump_workers: int = 2,
        restore_workers: int = 4,
        poll_s: float = 0.1,
        retention: Retention | None = None,
        steps: Callable[[], list[Step]] | None = None,
        verify_key: Ed25519PublicKey | None = None,
        learn_after_s: float = LEARN_AFTER_S,
        self_test: bool = True,
        checkpoint_attempts: int = retries.ATTEMPTS,
        checkpoint_backoff_s: tuple[float, ...] = retries.BACKOFF_S,
    ) -> None:
        self.source, self.sink, self.store, self.node = source, sink, store, node
        self.verify_key = verify_key  # set: only snapshots signed by it are restored
        self.retention = retention or Retention()
        self.spec, self.criu_version = criu.require(check_kernel=True)
        # A CRIU that cannot dump a server's sockets here would fail every pod one by one:
        # prove it once (agent.doctor) and else refuse, so pods serve and start cold.
        failed = doctor.self_test(self.spec, self.criu_version) if self_test else ""
        self.refusal = f"refused: the agent's socket self-test failed ({failed})" if failed else ""
        if failed:
            log.error("%s; every checkpoint and restore is refused", self.refusal)
        removed = store.clean_stale()
        if removed:
            log.info("removed stale staging folders: %s", ", ".join(removed))
        sink.abandon_unfinished()
        self._dumps = ThreadPoolExecutor(dump_workers, thread_name_prefix="dump")
        self._restores = ThreadPoolExecutor(restore_workers, thread_name_prefix="restore")
        self._busy: set[tuple[str, str]] = set()
        self._done: set[tuple[str, str]] = set()
        self._abandoned: set[str] = set()  # pod uids whose checkpoint-abandoned was reported
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.poll_s = poll_s
        self.steps = steps  # a fresh step list per operation; None: the default steps
        self.learn_after_s = learn_after_s  # 0: never sample restored workers
        self._timers: set[threading.Timer] = set()
        # A failed dump is tried again (the source serves on in between: CRIU resumed it),
        # and checkpoint-complete is written only for the last attempt (see do_checkpoint).
        self.retries = retries.Retries(checkpoint_attempts, checkpoint_backoff_s)
        self._heartbeat = Heartbeat(store.root, node)
        self._restore_pods = False  # the last scan saw restore-mode pods

    # --- loop -------------------------------------------------------------------
    def run(self) -> None:
        log.info(
            "agent up: node=%s store=%s criu=%s", self.node, self.store.root, self.criu_version
        )
        while not self._stop.is_set():
            self.tick()
            self.heartbeat()
            self._stop.wait(self.poll_s)
        self._heartbeat.stop()  # restore init steps stop waiting for this agent now

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        with self._lock:
            for timer in self._timers:
                timer.cancel()
        self._dumps.shutdown(wait=wait)
        self._restores.shutdown(wait=wait)
        self.source.close()
        self._heartbeat.stop()

    def heartbeat(self) -> None:
        """Keep this node's heartbeat (agent.heartbeat) while restore pods are on it."""
        self._heartbeat.beat(self._restore_pods)

    def tick(self) -> None:
        """One scan: start a task for every pod whose control dir asks for work."""
        try:
            pods = self.source.pods()
        except Exception as e:
            log.warning("listing pods failed: %s", e)
            return
        self._restore_pods = any(p.mode == InjectedMode.RESTORE for p in pods)
        for pod in pods:
            if pod.init_pid is None:
                continue
            try:
                if pod.mode == InjectedMode.CHECKPOINT and pod.has(Signal.CHECKPOINT_ABANDONED):
                    self._report_abandoned(pod)
                elif pod.mode == InjectedMode.CHECKPOINT and self._wants_checkpoint(pod):
                    self._submit(pod, "checkpoint", self._dumps, self.do_checkpoint)
                elif (
                    pod.mode == InjectedMode.RESTORE
                    and self._wants_restore(pod)
                    and procfs.catches(pod.init_pid, signal.SIGUSR1)  # placeholder is up
                ):
                    self._submit(pod, "restore", self._restores, self.do_restore)
            except OSError as e:  # container vanished between listing and looking
                log.debug("%s: %s", pod.ident, e)

    @staticmethod
    def _wants_checkpoint(pod: PodRef) -> bool:
        """Asked for, not done, and not given up (the pod then serves cold: never pause it)."""
        return (
            pod.has(Signal.READY_FOR_CHECKPOINT)
            and not pod.has(Signal.CHECKPOINT_COMPLETE)
            and not pod.has(Signal.CHECKPOINT_ABANDONED)
        )

    def _report_abandoned(self, pod: PodRef) -> None:
        """Say once per pod (per agent run) that its sidecar or hook gave the checkpoint up."""
        with self._lock:
            if pod.uid in self._abandoned:
                return
            self._abandoned.add(pod.uid)
        try:
            payload = json.loads(pod.read(Signal.CHECKPOINT_ABANDONED) or "{}")
        except (ValueError, RecursionError):  # the pod wrote it: any bytes at all
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        reason = str(payload.get("reason") or "unknown")[:100]
        detail = str(payload.get("detail") or "")[:500]
        log.info("%s: checkpoint abandoned (%s): %s", pod.ident, reason, detail)
        self.sink.checkpoint_abandoned(pod, reason, detail)

    @staticmethod
    def _wants_restore(pod: PodRef) -> bool:
        done = pod.has(Signal.RESTORE_COMPLETE) or pod.has(Signal.RESTORE_FAILED)
        return pod.has(Signal.RESTORE_REQUESTED) and not done

    def _submit(self, pod: PodRef, what: str, pool: ThreadPoolExecutor, fn) -> None:
        task = (pod.uid, what)
        with self._lock:
            if task in self._busy or task in self._done:
                return
            if what == "checkpoint" and self.retries.backing_off(pod.uid):
                return  # backing off after a failed attempt
            self._busy.add(task)
        wanted = self._wants_checkpoint if what == "checkpoint" else self._wants_restore

        def run() -> None:
            try:
                with self.pod_lock(pod) as lock_fd:
                    if lock_fd is None:  # the agent is stopping
                        return
                    if not wanted(pod):  # another agent did it while we waited
                        log.info("%s: %s already done by another agent", pod.ident, what)
                        return
                    fn(pod, lock_fd)
            except Exception:
                log.exception("%s: %s crashed", pod.ident, what)
            finally:
                with self._lock:
                    self._busy.discard(task)
                    if what != "checkpoint" or not self.retries.waiting(pod.uid):
                        self._done.add(task)

        pool.submit(run)

    @contextlib.contextmanager
    def pod_lock(self, pod: PodRef) -> Iterator[int | None]:
        """Hold the pod's lock file (flock) for one checkpoint or restore.

        Two agents serving the same pods (a restart overlapping the old one, two
        ``--local`` agents) take turns per pod, and the second then sees the signal
        the first wrote. The fd is passed on to the CRIU helper, so a helper that
        outlives a killed agent keeps the pod locked until it has finished.
        Yields the fd (-1: no lock file could be made), or None if the agent stops.
        """
        try:
            fd = open_control_file(pod.control / AGENT_LOCK_FILE, os.O_RDWR | os.O_CREAT)
        except OSError as e:
            log.warning("%s: no lock file (%s); going on unlocked", pod.ident, e)
            yield -1
            return
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if self._stop.wait(0.05):
                        yield None
                        return
            yield fd
        finally:
            os.close(fd)  # releases the flock unless a live helper still holds it

    # --- checkpoint ---------------------------------------------------------------
    def worker_pid(self, pod: PodRef) -> int:
        """The worker: the container init's one live child (thaw's wrapper started it)."""
        assert pod.init_pid is not None
        kids = [k for k in procfs.children_of(pod.init_pid) if procfs.alive(k)]
        if len(kids) != 1:
            raise CheckpointError(
                f"expected the worker as the only child of the container's init "
                f"(pid {pod.init_pid}), found {kids or 'none'}; is the command wrapped?"
            )
        return kids[0]

    @staticmethod
    def _hold(lock_fd: int) -> tuple[int, ...]:
        return (lock_fd,) if lock_fd >= 0 else ()

    def do_checkpoint(self, pod: PodRef, lock_fd: int = -1) -> None:
        name = new_name(pod.key or pod.name)
        self.sink.checkpoint_started(pod, name)
        try:
            if self.refusal:
                raise CheckpointError(self.refusal)
            pid = self.worker_pid(pod)
            log.info("%s: checkpointing worker pid %d as %s", pod.ident, pid, name)
            result = checkpoint(
                pid,
                self.store,
                key=pod.key or pod.name,
                name=name,
                leave_running=True,
                image=pod.image,
                source=Source(pod.namespace, pod.name, pod.container, self.node),
                spec=self.spec,
                criu_version=self.criu_version,
                steps=self.steps() if self.steps else None,
                hold_fds=self._hold(lock_fd),
            )
        except Exception as e:  # the source must always be told, so it resumes serving
            if not isinstance(e, (CheckpointError, StoreError, OSError)):
                log.exception("%s: unexpected checkpoint error", pod.ident)
            self.sink.checkpoint_failed(pod, name, str(e))
            if self._retry_later(pod, e):
                return
            log.error("%s: checkpoint failed: %s", pod.ident, e)
            self._signal_source(pod, {"ok": False, "snapshot": name, "error": str(e)})
            return
        self.retries.succeeded(pod.uid)
        summary = result.summary()
        log.info("%s: snapshot %s ready (%d bytes)", pod.ident, name, result.bytes)
        self.sink.checkpoint_ready(pod, name, summary)
        self._signal_source(pod, {"ok": True, "snapshot": name, **summary})
        for old in prune(self.store, self.retention, key=pod.key or pod.name, keep=name):
            self.sink.snapshot_deleted(pod, old)

    def _retry_later(self, pod: PodRef, error: Exception) -> bool:
        """Schedule another attempt if any is left; False: this was the last one.

        The source is not told between attempts: it waits (quiesced) for
        checkpoint-complete, which comes once, with the last attempt's outcome.
        """
        failed, delay = self.retries.failed(pod.uid, error, final=bool(self.refusal))
        if delay is None:
            return False
        log.warning(
            "%s: checkpoint attempt %d of %d failed (%s); retrying in %gs",
            pod.ident,
            failed,
            self.retries.attempts,
            error,
            delay,
        )
        return True

    @staticmethod
    def _signal_source(pod: PodRef, payload: dict) -> None:
        try:
            pod.write(Signal.CHECKPOINT_COMPLETE, payload)
        except OSError as e:
            log.error("%s: cannot write %s: %s", pod.ident, Signal.CHECKPOINT_COMPLETE.value, e)

    # --- restore --------------------------------------------------------------------
    def snapshot_for(self, pod: PodRef) -> str:
        if pod.snapshot:
            return pod.snapshot
        name = self.store.newest_for_key(pod.key) if pod.key else None
        if not name:
            raise StoreError(f"no snapshot for key {pod.key!r} in {self.store.root}")
        return name

    def do_restore(self, pod: PodRef, lock_fd: int = -1) -> None:
        assert pod.init_pid is not None
        name = pod.snapshot or "?"
        try:
            if self.refusal:
                raise RestoreError(self.refusal)
            name = self.snapshot_for(pod)
            folder = self.store.path(name)
            # The name comes from the pod's own annotations: never another namespace's
            # snapshot, and (with a key) only a signed one. See docs/security.md.
            authorize_restore(folder, pod.namespace, self.verify_key)
            manifest = verify(folder, self.criu_version)
            log.info("%s: restoring %s into pid %d", pod.ident, name, pod.init_pid)
            result = restore(
                folder,
                into=pod.init_pid,
                spec=self.spec,
                criu_version=self.criu_version,
                verified=manifest,
                steps=self.steps() if self.steps else None,
                hold_fds=self._hold(lock_fd),
                clear_leftovers=True,  # an earlier agent may have been cut off mid-restore
            )
        except Exception as e:  # whatever went wrong, the pod must cold-start, never hang
            if not isinstance(e, (RestoreError, SnapshotInvalid, StoreError, OSError)):
                log.exception("%s: unexpected restore error", pod.ident)
            log.error("%s: restore failed, cold start: %s", pod.ident, e)
            payload = {"reason": str(e), "stage": "agent", "snapshot": name}
            self._finish_restore(pod, Signal.RESTORE_FAILED, payload)
            self.sink.restore_failed(pod, name, str(e))
            return
        summary = result.summary()
        # The placeholder reads "pid" inside the container: the pid in its namespace.
        payload = {**summary, "pid": result.ns_pid, "host_pid": result.pid}
        self._finish_restore(pod, Signal.RESTORE_COMPLETE, payload)
        log.info("%s: restored %s as pid %d", pod.ident, name, result.pid)
        self.sink.restored(pod, name, summary)
        if self.learn_after_s > 0:
            worker = leftovers.identity(result.pid)  # its pid may be reused by then
            self._later(self.learn_after_s, self.learn, pod.ident, name, result.pid, worker)

    def _later(self, delay: float, fn: Callable, *args) -> None:
        def run() -> None:
            with self._lock:
                self._timers.discard(timer)
            if not self._stop.is_set():
                fn(*args)

        timer = threading.Timer(delay, run)
        timer.daemon = True
        with self._lock:
            self._timers.add(timer)
        timer.start()

    def learn(self, ident: str, name: str, pid: int, identity: tuple | None = None) -> int:
        """Add what restored worker ``pid`` touched to snapshot ``name``'s working set."""
        if identity is not None and leftovers.identity(pid) != identity:
            return 0  # the worker is gone (its pid may be another process's now)
        staging = None
        try:
            folder = self.store.path(name)
            staging = self.store.new_staging(name)
            added = working_set.learn(folder, procfs.process_tree(pid), staging)
        except (OSError, StoreError) as e:  # advisory: the next restore just reads more
            log.info("%s: working set of %s not updated: %s", ident, name, e)
            return 0
        finally:
            if staging is not None:
                self.store.discard(staging)
        if added:
            log.info("%s: working set of %s grew by %d bytes", ident, name, added)
        return added

    @staticmethod
    def _finish_restore(pod: PodRef, sig: Signal, payload: dict | str) -> None:
        assert pod.init_pid is not None
        try:
            pod.write(sig, payload)
        except OSError as e:
            log.error("%s: cannot write %s: %s", pod.ident, sig.value, e)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pod.init_pid, signal.SIGUSR1)


def run_forever(agent: Agent) -> int:
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    t = threading.Thread(target=agent.run, name="agent-loop", daemon=True)
    t.start()
    while not stop.is_set() and t.is_alive():
        stop.wait(0.5)
    agent.stop(wait=False)
    return 0


def wait_for(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.02)
    return False
