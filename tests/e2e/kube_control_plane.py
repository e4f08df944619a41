"""A real, loopback-only Kubernetes control plane for tests: etcd + kube-apiserver
(+ kube-controller-manager on demand), from the binaries scripts/build-kube.sh caches.

Each component is a child process in its own session, with its log in the work
folder; ``stop()`` terminates all of them (SIGTERM, then SIGKILL), so no
process outlives the test session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml
from kube_pki import ControlPlanePki, make_control_plane_pki

KUBE_VERSION = "1.20.2"
REQUIRED_BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
SERVICE_CIDR = "10.0.0.0/24"


def kube_bin_dir() -> Path:
    cache = os.environ.get("THAW_CACHE") or os.path.expanduser("~/.cache/thaw")
    return Path(cache) / f"kube-{KUBE_VERSION}" / "bin"


def missing_binaries(bin_dir: Path) -> list[str]:
    return [b for b in REQUIRED_BINARIES if not os.access(bin_dir / b, os.X_OK)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ControlPlaneError(RuntimeError):
    """A component failed to start; the message carries the tail of its log."""


class ControlPlane:
    def __init__(self, bin_dir: Path, work: Path) -> None:
        self.bin_dir = bin_dir
        self.work = work
        self.procs: dict[str, subprocess.Popen] = {}
        self.pki: ControlPlanePki | None = None
        self.etcd_port = 0
        self.apiserver_port = 0
        self.kubeconfig = work / "admin.kubeconfig"

    # --- lifecycle -------------------------------------------------------------------
    def start(self, timeout_s: float = 90) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.pki = make_control_plane_pki(self.work / "pki")
        self._start_etcd(timeout_s)
        self._start_apiserver(timeout_s)
        self._write_kubeconfig()

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self._terminate(name)
        self.procs.clear()

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def _terminate(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            # The API server drains open watches on SIGTERM; throw-away test state does not
            # need that, so do not wait long before SIGKILL.
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = (self.work / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait(self, name: str, ready, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}"
                )
            if ready():
                return
            time.sleep(0.2)
        raise ControlPlaneError(f"{name} not ready after {timeout_s}s:\n{self.log_tail(name)}")

    # --- etcd ------------------------------------------------------------------------
    def _start_etcd(self, timeout_s: float) -> None:
        self.etcd_port, peer = free_port(), free_port()
        client_url, peer_url = f"http://127.0.0.1:{self.etcd_port}", f"http://127.0.0.1:{peer}"
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=e2e",
                f"--data-dir={self.work / 'etcd-data'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=e2e={peer_url}",
                "--initial-cluster-state=new",
                "--log-level=warn",
                "--logger=zap",
            ],
        )

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{client_url}/health", timeout=1) as r:
                    return b'"true"' in r.read()
            except OSError:
                return False

        self._wait("etcd", healthy, timeout_s)

    # --- kube-apiserver --------------------------------------------------------------
    def _start_apiserver(self, timeout_s: float) -> None:
        assert self.pki
        self.apiserver_port = free_port()
        p = self.pki
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                "--insecure-port=0",
                f"--cert-dir={self.work / 'apiserver-certs'}",
                f"--tls-cert-file={p.serving_cert}",
                f"--tls-private-key-file={p.serving_key}",
                f"--client-ca-file={p.ca_cert}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={p.sa_public}",
                f"--service-account-signing-key-file={p.sa_private}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                # No token controller runs, so pods cannot get service-account tokens.
                "--disable-admission-plugins=ServiceAccount",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._wait("kube-apiserver", lambda: self._get("/readyz") == 200, timeout_s)

    def _ssl_context(self) -> ssl.SSLContext:
        assert self.pki
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return ctx

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(
                f"{self.server}{path}", timeout=2, context=self._ssl_context()
            ) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def _write_kubeconfig(self) -> None:
        assert self.pki
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority": str(self.pki.ca_cert),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate": str(self.pki.admin_cert),
                        "client-key": str(self.pki.admin_key),
                    },
                }
            ],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "admin"}}],
            "current-context": "e2e",
        }
        self.kubeconfig.write_text(yaml.safe_dump(cfg))
        self.kubeconfig.chmod(0o600)

    # --- kube-controller-manager -----------------------------------------------------
    def start_controller_manager(self, timeout_s: float = 60) -> None:
        """Deployment -> ReplicaSet -> Pod needs the controllers; started only when asked."""
        if "kube-controller-manager" in self.procs:
            return
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--port=0",
                "--leader-elect=false",
                "--controllers=deployment,replicaset,garbagecollector,namespace",
                "--use-service-account-credentials=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--v=1",
            ],
        )

        def syncing() -> bool:
            return "Starting replicaset controller" in self.log_tail("kube-controller-manager", 400)

        self._wait("kube-controller-manager", syncing, timeout_s)

    # --- kubectl ---------------------------------------------------------------------
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
            )
        return result


def thaw_cli() -> list[str]:
    """The real ``thaw`` console script of this checkout (same interpreter as pytest)."""
    return [sys.executable, "-m", "thaw.cli"]


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM the child's session, then SIGKILL; never leaves it running."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
