"""Real sockets through the real agent: serving processes in pods with their own IPs are
checkpointed while clients talk to them, and restored into pods with other IPs."""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time

import pytest

from agent import procfs
from agent.local import LocalPod, start_checkpoint_pod, start_restore_pod
from tests.support import engine_server, net_server
from thaw.contract import Signal

pytestmark = pytest.mark.criu

NET_SERVER = [sys.executable, "-m", "tests.support.net_server"]


def _ask_checkpoint(pod: LocalPod) -> dict:
    """What the sidecar does once the engine is healthy; then wait for the agent's answer."""
    pod.signal_path(Signal.READY_FOR_CHECKPOINT).write_text(json.dumps({"by": "test"}))
    done = json.loads(pod.wait_signal(Signal.CHECKPOINT_COMPLETE, 60))
    assert done["ok"], done
    return done


def _restored(local_root, pods, name: str, argv: list[str], key: str) -> tuple[LocalPod, dict]:
    dst = start_restore_pod(local_root, name, argv, key=key, network=True)
    pods.append(dst)
    complete = json.loads(dst.wait_signal(Signal.RESTORE_COMPLETE, 60))
    assert not dst.signal_path(Signal.RESTORE_FAILED).exists(), dst.box.log()
    return dst, complete


class Storm:
    """New connections, one every few ms, each sending a request it reads only later:
    probes and clients that arrive while the server is busy or frozen for the dump."""

    def __init__(self, hosts: list[str]) -> None:
        self.hosts = hosts
        self.sent: list[tuple[http.client.HTTPConnection, float]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(0.01):
            conn = http.client.HTTPConnection(self.hosts[i % len(self.hosts)], 8080, timeout=20)
            i += 1
            try:
                conn.connect()
                connected = time.time()
                conn.request("GET", "/hello", headers={"Connection": "close"})
            except OSError as e:
                self.errors.append(str(e))
                continue
            self.sent.append((conn, connected))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def answers(self) -> list[tuple[dict, float]]:
        """Read every answer: (response, seconds it waited to be accepted)."""
        self.stop()
        out = []
        for conn, connected in self.sent:
            resp = conn.getresponse()
            assert resp.status == 200
            body = json.loads(resp.read())
            conn.close()
            out.append((body, body["accepted_at"] - connected))
        return out


def _keep_alive_get(conn: http.client.HTTPConnection) -> dict:
    conn.request("GET", "/hello")
    resp = conn.getresponse()
    assert resp.status == 200
    return json.loads(resp.read())


def _wait_ended(host: str, peer: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stats = net_server.get(host, "/stats")
        if peer in stats["ended"] and not stats["open"]:
            return stats
        assert time.monotonic() < deadline, f"{peer} still open in the restored copy: {stats}"
        time.sleep(0.05)


def test_listeners_move_to_the_new_ip_while_clients_keep_talking(running_agent, local_root, pods):
    src = start_checkpoint_pod(local_root, "src", NET_SERVER, key="k-net", network=True)
    pods.append(src)
    net = src.box.net
    first = net_server.wait_serving(net.ip)
    ns_pid = first["pid"]

    keep = http.client.HTTPConnection(net.ip, 8080, timeout=20)
    before = _keep_alive_get(keep)
    keep_peer = f"{net.host_ip}:{keep.sock.getsockname()[1]}"
    net_server.get(net.ip, "/pause")  # busy: new connections now wait in the listen queue
    storm = Storm([net.ip, net.ip6])
    while len(storm.sent) < 10:
        time.sleep(0.01)
    queued = len(storm.sent)
    _ask_checkpoint(src)  # connections keep arriving during the dump
    storm.stop()
    assert len(storm.sent) > queued, "no connection arrived while the agent checkpointed"

    # The source kept running and kept its client: same connection, next request.
    after = _keep_alive_get(keep)
    assert (after["conn"], after["request"]) == (before["conn"], before["request"] + 1)
    # The connections that waited unaccepted during the dump are the source's to serve.
    assert net_server.unix_ask(str(src.control), "resume")["pid"] == ns_pid
    answers = storm.answers()
    assert not storm.errors, storm.errors[:3]
    assert len(answers) >= 10 and all(a["pid"] == ns_pid for a, _ in answers)
    assert net_server.udp_echo(net.ip, "src")["udp"] == "src"
    assert net_server.unix_ask(str(src.control), "src")["pid"] == ns_pid

    dst, complete = _restored(local_root, pods, "dst", NET_SERVER, "k-net")
    new = dst.box.net
    assert new.ip != net.ip
    assert complete["pid"] == ns_pid
    net_server.unix_ask(str(dst.control), "resume")  # it was paused when dumped
    # Every listener answers at the new pod's addresses: TCP v4, TCP v6, UDP, unix.
    assert net_server.get(new.ip, "/hello")["pid"] == ns_pid
    assert net_server.get(new.ip6, "/hello")["pid"] == ns_pid
    assert net_server.udp_echo(new.ip, "dst") == {"udp": "dst", "pid": ns_pid}
    assert net_server.unix_ask(str(dst.control), "dst")["pid"] == ns_pid
    # The copy inherited the source's open keep-alive connection, closed by the restore.
    stats = _wait_ended(new.ip, keep_peer)
    assert keep_peer not in net_server.get(net.ip, "/stats")["ended"]  # source: still open
    assert stats["open"] == []
    # ...while the source's client goes on talking to the source.
    assert _keep_alive_get(keep)["request"] == before["request"] + 2
    keep.close()
    assert procfs.ns_inode(complete["host_pid"], "net") == procfs.ns_inode(dst.box.pid, "net")


def test_api_server_and_engine_core_restore_as_one_tree(running_agent, local_root, pods):
    argv = [sys.executable, "-m", "tests.support.engine_server"]
    src = start_checkpoint_pod(local_root, "api", argv, key="k-engine", network=True)
    pods.append(src)
    ip = src.box.net.ip
    health = engine_server.wait_healthy(ip)
    warm = engine_server.complete(ip, "the quick brown fox")
    assert warm["served"] == 1 and warm["core_pid"] != warm["api_pid"]

    client = http.client.HTTPConnection(ip, engine_server.PORT, timeout=20)  # keep-alive
    assert engine_server.complete_on(client, "hello")["served"] == 2
    _ask_checkpoint(src)
    again = engine_server.complete_on(client, "the quick brown fox")
    assert again["text"] == warm["text"] and again["served"] == 3  # the source serves on

    dst, complete = _restored(local_root, pods, "api-restored", argv, "k-engine")
    assert complete["pid"] == health["api_pid"]
    core = procfs.children_of(complete["host_pid"])
    assert [procfs.ns_pids(c)[-1] for c in core] == [health["core_pid"]]
    new_ip = dst.box.net.ip
    assert new_ip != ip
    restored = engine_server.complete(new_ip, "the quick brown fox")
    # Same weights, same answer; the core's count goes on from the snapshot's (2).
    assert restored == {**warm, "served": 3}
    assert engine_server.complete(new_ip, "hello")["text"] == engine_server.expected("hello")
    client.close()
