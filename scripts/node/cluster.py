"""A real single-node Kubernetes cluster as plain child processes.

Everything runs inside one network namespace and one private mount namespace
that this module creates (held by a ``sleep`` process):

* network: ``lo`` plus the CNI bridge ``cni0`` with a private subnet; nothing
  is routed off the machine. The test process reaches the API server through
  a loopback port forwarder (netns_forward.py) and pod IPs by entering the
  namespace (``Node.in_netns``).
* mounts: a fresh tmpfs on /run and bind mounts of the session folder on
  /var/lib and /var/log, so containerd, the kubelet and the CNI plugins use
  their usual paths (/run/containerd, /var/lib/kubelet, ...) while every byte
  and every mount they make stays private and disappears with the namespace.

Processes: containerd (CRI, runc, overlayfs), etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kubelet. ``stop()`` kills pods (via
the kubelet's cgroup root), daemons, container shims and the holder, removes
the cgroups and the session folder: nothing is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_pki import ClusterPKI

HERE = Path(__file__).resolve().parent
NODE_NAME = "thaw-node"
POD_SUBNET = "10.244.0.0/24"
NODE_IP = "10.244.0.1"  # the bridge's address: gateway for pods, the node's InternalIP
SERVICE_RANGE = "10.96.0.0/16"
API_PORT = 6443
CONTAINERD_SOCK = "/run/containerd/containerd.sock"
CGROUP_HIERARCHIES = Path("/sys/fs/cgroup")
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class ClusterError(RuntimeError):
    """A component did not start or did not become ready; the message names it and its log."""


def log(msg: str) -> None:
    print(f"node: {msg}", file=sys.stderr, flush=True)


def _pdeathsig() -> None:
    """Children die with the process that started them, even if it is SIGKILLed."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _cgroup_tree(root: str) -> list[Path]:
    """The cgroup ``root`` and everything below it in every v1 hierarchy, deepest first."""
    found: list[Path] = []
    for h in CGROUP_HIERARCHIES.iterdir():
        top = h / root.lstrip("/")
        if top.is_dir():
            found += [Path(d) for d, _, _ in os.walk(top, onerror=lambda e: None)]
    return sorted(found, key=lambda d: -len(d.parts))


def _kill_cgroup_tree(root: str) -> None:
    """SIGKILL every process in the tree until it stays empty (pods, their children)."""
    for _ in range(50):
        pids = set()
        for d in _cgroup_tree(root):
            with contextlib.suppress(OSError):
                pids.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _remove_cgroup_tree(root: str) -> None:
    for d in _cgroup_tree(root):
        for _ in range(20):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


def reap_stale_sessions() -> list[str]:
    """Remove what crashed earlier sessions left: their pods' cgroups and session folders.

    A session is stale when the holder process recorded in its folder is gone (a
    SIGKILLed test run: its daemons died with it through PDEATHSIG, its pods did not).
    """
    reaped = []
    for folder in Path(tempfile.gettempdir()).glob("thaw-node-*"):
        pidfile = folder / "holder.pid"
        try:
            pid = int(pidfile.read_text())
            os.kill(pid, 0)
            continue  # alive: another session's node
        except (OSError, ValueError):
            pass
        if not pidfile.exists() and time.time() - folder.stat().st_mtime < 600:
            continue  # a session still starting up
        cgroup_root = "/thaw-" + folder.name.removeprefix("thaw-node-").lower().replace("_", "")
        _kill_cgroup_tree(cgroup_root)
        _remove_cgroup_tree(cgroup_root)
        subprocess.run(["rm", "-rf", "--one-file-system", str(folder)], check=False)
        reaped.append(str(folder))
    return reaped


def _start_ticks(pid: int) -> int:
    """When ``pid`` started, in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])


def _boot_ticks() -> int:
    """Now, on the clock of ``_start_ticks``."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK")) + 1


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


@dataclasses.dataclass
class Paths:
    node_root: Path  # from install.sh: containerd, runc, CNI plugins
    kube_bin: Path  # kube-apiserver, kubelet, ..., etcd


class Node:
    """Start with ``start()``, always ``stop()``; also a context manager."""

    def __init__(self, paths: Paths, images: dict[str, dict[str, str]]) -> None:
        self.paths = paths
        self.images = images
        self.tmp = Path(tempfile.mkdtemp(prefix="thaw-node-"))
        self.id = self.tmp.name.removeprefix("thaw-node-").lower().replace("_", "")
        self.cgroup_root = f"/thaw-{self.id}"
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.holder: subprocess.Popen[bytes] | None = None
        self.forwarder: subprocess.Popen[bytes] | None = None
        self.api_port = 0
        self.timings: dict[str, float] = {}
        self.pki: ClusterPKI | None = None
        self.kubeconfig = self.tmp / "admin-host.kubeconfig"  # for the test process
        self._mntns = ""  # the node's mount namespace, kept for leftovers()
        self._ns_cutoff: int | None = None  # set once the holder is gone (see _ns_pids)

    # --- namespace plumbing -----------------------------------------------------

    @property
    def netns_path(self) -> str:
        assert self.holder is not None
        return f"/proc/{self.holder.pid}/ns/net"

    def _ns_cmd(self, argv: list[str]) -> list[str]:
        assert self.holder is not None
        return ["nsenter", f"--target={self.holder.pid}", "--net", "--mount", "--", *argv]

    def ns_run(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
        """Run a command inside the node's namespaces and wait for it."""
        return subprocess.run(self._ns_cmd(argv), check=True, **kw)

    def in_netns(self, fn: Callable[[], T]) -> T:
        """Call ``fn`` on a thread that has joined the node's network namespace."""
        result: list[Any] = []

        def run() -> None:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(self.netns_path, os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns into the node's netns failed")
                finally:
                    os.close(fd)
                result.append(("ok", fn()))
            except BaseException as exc:
                result.append(("err", exc))

        t = threading.Thread(target=run, name="node-netns")
        t.start()
        t.join()
        kind, value = result[0]
        if kind == "err":
            raise value
        return value  # type: ignore[no-any-return]

    def http_get(self, host: str, port: int, path: str = "/", timeout: float = 5.0) -> bytes:
        """Plain HTTP GET to an address on the node's network (a pod IP, say)."""

        def get() -> bytes:
            with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as r:
                return r.read()  # type: ignore[no-any-return]

        return self.in_netns(get)

    def _start_holder(self) -> None:
        for d in ("var-lib/kubelet", "var-lib/containerd", "var-lib/cni", "var-log", "etc"):
            (self.tmp / d).mkdir(parents=True, exist_ok=True)
        script = f"""
set -eu
ip link set lo up
ip link add cni0 type bridge
ip addr add {NODE_IP}/24 dev cni0
ip link set cni0 up
mount -t tmpfs -o mode=0755 thaw-run /run
mkdir -p /run/containerd /run/netns /run/lock
mount --bind {self.tmp}/var-lib /var/lib
mount --bind {self.tmp}/var-log /var/log
# Like a systemd host: shared mounts, so kubelet's mountPropagation (HostToContainer,
# Bidirectional) works. The peer groups are new and exist only inside this namespace.
mount --make-rshared /
echo ready
exec sleep infinity
"""
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "bash", "-c", script],
            stdout=subprocess.PIPE,
            stderr=open(self.logs / "holder.log", "wb"),  # noqa: SIM115
            preexec_fn=_pdeathsig,
        )
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != b"ready":
            raise ClusterError(f"namespace setup failed: {self._tail('holder')}")
        self._mntns = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
        (self.tmp / "holder.pid").write_text(str(self.holder.pid))

    def _start_forwarder(self) -> None:
        self.forwarder = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "netns_forward.py"),
                self.netns_path,
                "127.0.0.1",
                str(API_PORT),
            ],
            stdout=subprocess.PIPE,
            stderr=open(self.logs / "forwarder.log", "wb"),  # noqa: SIM115
            preexec_fn=_pdeathsig,
        )
        assert self.forwarder.stdout is not None
        line = self.forwarder.stdout.readline().strip()
        if not line.isdigit():
            raise ClusterError(f"port forwarder failed: {self._tail('forwarder')}")
        self.api_port = int(line)

    # --- processes -----------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        out = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            self._ns_cmd(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_pdeathsig,
            cwd=self.tmp,
        )

    def _tail(self, name: str, lines: int = 25) -> str:
        p = self.logs / f"{name}.log"
        text = p.read_text(errors="replace").splitlines()[-lines:] if p.exists() else []
        return f"{p}:\n" + "\n".join(text)

    def _wait(self, what: str, name: str, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise ClusterError(
                    f"{name} exited ({proc.returncode}) before {what}\n" + self._tail(name)
                )
            try:
                if check():
                    return
            except Exception:  # not up yet
                pass
            time.sleep(0.2)
        raise ClusterError(
            f"timed out after {timeout:.0f}s waiting for {what}\n" + self._tail(name)
        )

    # --- containerd ------------------------------------------------------------------

    def _containerd_config(self) -> Path:
        root = self.paths.node_root
        cni_conf = self.tmp / "etc" / "cni"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-thaw-bridge.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "thaw-pods",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "cni0",
                            "isGateway": True,
                            "ipMasq": False,  # nothing leaves the namespace, nothing to NAT
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                            },
                        },
                        {"type": "loopback"},
                    ],
                },
                indent=2,
            )
        )
        runc = "io.containerd.runc.v2"
        cfg = f"""version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{CONTAINERD_SOCK}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.images["pause"]["ref"]}"
  enable_selinux = false
  # These machines withhold CAP_SYS_RESOURCE: a container may not get an oom_score_adj
  # below containerd's own, so clamp instead of failing runc's setup.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "{runc}"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{root}/usr/sbin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{root}/usr/lib/cni"
    conf_dir = "{cni_conf}"
"""
        path = self.tmp / "etc" / "containerd.toml"
        path.write_text(cfg)
        return path

    def _ctr(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        ctr = str(self.paths.node_root / "usr/bin/ctr")
        return self.ns_run([ctr, "--address", CONTAINERD_SOCK, *args], **kw)

    def ctr(self, *args: str) -> str:
        """Run ctr against the node's containerd; returns stdout, raises with stderr."""
        try:
            return self._ctr(*args, capture_output=True).stdout.decode()
        except subprocess.CalledProcessError as exc:
            raise ClusterError(f"ctr {' '.join(args)}: {exc.stderr.decode()}") from exc

    def _start_containerd(self) -> None:
        cfg = self._containerd_config()
        env = dict(os.environ)
        env["PATH"] = f"{self.paths.node_root}/usr/bin:{self.paths.node_root}/usr/sbin:" + env.get(
            "PATH", "/usr/bin:/bin"
        )
        self._spawn(
            "containerd",
            [
                f"{self.paths.node_root}/usr/bin/containerd",
                "--config",
                str(cfg),
                "--log-level",
                "info",
            ],
            env=env,
        )
        self._wait(
            "containerd's socket",
            "containerd",
            lambda: self._ctr("version", capture_output=True).returncode == 0,
            30,
        )

    def import_images(self) -> None:
        for name, img in self.images.items():
            t0 = time.monotonic()
            layout = Path(img["layout"])
            tar = subprocess.Popen(
                ["tar", "-C", str(layout), "-cf", "-", "oci-layout", "index.json", "blobs"],
                stdout=subprocess.PIPE,
            )
            try:
                self._ctr(
                    "-n",
                    "k8s.io",
                    "images",
                    "import",
                    "--no-unpack",
                    "-",
                    stdin=tar.stdout,
                    capture_output=True,
                )
            except subprocess.CalledProcessError as exc:
                raise ClusterError(f"importing {name}: {exc.stderr.decode()}") from exc
            finally:
                tar.wait()
            self.timings[f"import_{name}_s"] = time.monotonic() - t0

    # --- control plane -----------------------------------------------------------------

    def _make_pki(self) -> None:
        pki = self.pki = ClusterPKI(self.tmp / "pki")
        pki.issue(
            "apiserver",
            "kube-apiserver",
            server_hosts=[
                "127.0.0.1",
                NODE_IP,
                "10.96.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )
        pki.issue("admin", "thaw-admin", "system:masters", client=True)
        pki.issue(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            "system:masters",
            client=True,
        )
        pki.issue("controller-manager", "system:kube-controller-manager", client=True)
        pki.issue("scheduler", "system:kube-scheduler", client=True)
        pki.issue("kubelet", f"system:node:{NODE_NAME}", "system:nodes", client=True)
        pki.issue("kubelet-serving", NODE_NAME, server_hosts=[NODE_IP, NODE_NAME])
        pki.issue("kube-proxy", "system:kube-proxy", client=True)
        inside = f"https://127.0.0.1:{API_PORT}"
        for name in ("admin", "controller-manager", "scheduler", "kubelet", "kube-proxy"):
            pki.kubeconfig(name, inside, self.tmp / f"{name}.kubeconfig")

    def _kube(self, name: str) -> str:
        return str(self.paths.kube_bin / name)

    def _start_etcd(self) -> None:
        self._spawn(
            "etcd",
            [
                self._kube("etcd"),
                "--name=thaw",
                f"--data-dir={self.tmp}/etcd",
                "--listen-client-urls=http://127.0.0.1:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=thaw=http://127.0.0.1:2380",
                "--listen-metrics-urls=http://127.0.0.1:2381",
            ],
        )

    def _start_apiserver(self) -> None:
        p = self.tmp / "pki"
        self._spawn(
            "kube-apiserver",
            [
                self._kube("kube-apiserver"),
                "--etcd-servers=http://127.0.0.1:2379",
                # 0.0.0.0 of the node's own namespace: loopback and the private pod bridge.
                "--bind-address=0.0.0.0",
                f"--secure-port={API_PORT}",
                "--insecure-port=0",
                f"--advertise-address={NODE_IP}",
                f"--service-cluster-ip-range={SERVICE_RANGE}",
                f"--client-ca-file={p}/ca.crt",
                f"--tls-cert-file={p}/apiserver.crt",
                f"--tls-private-key-file={p}/apiserver.key",
                f"--kubelet-client-certificate={p}/apiserver-kubelet-client.crt",
                f"--kubelet-client-key={p}/apiserver-kubelet-client.key",
                f"--kubelet-certificate-authority={p}/ca.crt",
                "--kubelet-preferred-address-types=InternalIP",
                f"--service-account-key-file={p}/sa.pub",
                f"--service-account-signing-key-file={p}/sa.key",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                # Webhook Services resolve to endpoint IPs: no kube-proxy needed for admission.
                "--enable-aggregator-routing=true",
                "--endpoint-reconciler-type=lease",
            ],
        )

    def api_ssl(self) -> ssl.SSLContext:
        assert self.pki is not None
        ctx = ssl.create_default_context(cafile=str(self.pki.path("ca", "crt")))
        ctx.load_cert_chain(self.pki.path("admin", "crt"), self.pki.path("admin", "key"))
        return ctx

    def api_get(self, path: str) -> Any:
        """GET on the API server as cluster admin (through the forwarder), JSON decoded."""
        url = f"https://127.0.0.1:{self.api_port}{path}"
        with urllib.request.urlopen(url, context=self.api_ssl(), timeout=10) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()

    def _start_controllers(self) -> None:
        p = self.tmp / "pki"
        kc = self.tmp / "controller-manager.kubeconfig"
        self._spawn(
            "kube-controller-manager",
            [
                self._kube("kube-controller-manager"),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                "--port=0",
                "--leader-elect=false",
                f"--service-account-private-key-file={p}/sa.key",
                f"--root-ca-file={p}/ca.crt",
                f"--cluster-signing-cert-file={p}/ca.crt",
                f"--cluster-signing-key-file={p}/ca.key",
                "--use-service-account-credentials=true",
                "--controllers=*,-nodeipam",
            ],
        )
        kc = self.tmp / "scheduler.kubeconfig"
        self._spawn(
            "kube-scheduler",
            [
                self._kube("kube-scheduler"),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1",
                "--port=0",
                "--leader-elect=false",
            ],
        )

    def _make_cgroup_root(self) -> None:
        """The kubelet's --cgroup-root, one per session, so stop() can find every pod."""
        for h in CGROUP_HIERARCHIES.iterdir():
            if not (h / "cgroup.procs").exists() or (h / "cgroup.subtree_control").exists():
                continue  # not a v1 hierarchy (the hybrid layout's cgroup2 mount)
            d = h / self.cgroup_root.lstrip("/")
            d.mkdir(exist_ok=True)
            for f in ("cpuset.cpus", "cpuset.mems"):
                if (h / f).exists():
                    (d / f).write_text((h / f).read_text())

    def _start_kubelet(self) -> None:
        p = self.tmp / "pki"
        resolv = self.tmp / "etc" / "resolv.conf"
        resolv.write_text(f"nameserver {NODE_IP}\nsearch cluster.local\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "tlsCertFile": f"{p}/kubelet-serving.crt",
            "tlsPrivateKeyFile": f"{p}/kubelet-serving.key",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": f"{p}/ca.crt"},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "cgroupsPerQOS": True,
            "failSwapOn": False,
            "resolvConf": str(resolv),
            "clusterDomain": "cluster.local",
            "makeIPTablesUtilChains": False,  # no kube-proxy, no iptables on this node
            # Shared CI disks are often fuller than the defaults allow; never evict test pods.
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "runtimeRequestTimeout": "5m",
            # Secret and ConfigMap volumes refresh within seconds, not the default minute
            # (the webhook waits for the certificate its leader just wrote to a Secret).
            "syncFrequency": "5s",
        }
        cfg = self.tmp / "etc" / "kubelet.yaml"
        cfg.write_text(yaml.safe_dump(config))
        self._make_cgroup_root()
        self._spawn(
            "kubelet",
            [
                self._kube("kubelet"),
                f"--config={cfg}",
                f"--kubeconfig={self.tmp}/kubelet.kubeconfig",
                "--container-runtime=remote",
                f"--container-runtime-endpoint=unix://{CONTAINERD_SOCK}",
                f"--pod-infra-container-image={self.images['pause']['ref']}",
                "--root-dir=/var/lib/kubelet",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )

    def _start_kube_proxy(self) -> None:
        """kube-proxy in iptables mode: Service VIPs (the API server's 10.96.0.1 first) for pods.

        iptables comes from install.sh's tree (legacy backend); the rules live in the node's
        own network namespace. The conntrack sysctls are global, so kube-proxy leaves them.
        """
        root = self.paths.node_root
        bindir = self.tmp / "bin"
        bindir.mkdir(exist_ok=True)
        for tool in ("iptables", "iptables-save", "iptables-restore"):
            for fam in ("", "6"):
                link = bindir / tool.replace("ip", f"ip{fam}", 1)
                link.symlink_to(root / "usr/sbin/xtables-legacy-multi")
        lib = root / "usr/lib/x86_64-linux-gnu"
        env = dict(os.environ, LD_LIBRARY_PATH=str(lib), XTABLES_LIBDIR=str(lib / "xtables"))
        env["PATH"] = f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}"
        self._spawn(
            "kube-proxy",
            [
                self._kube("kube-proxy"),
                f"--kubeconfig={self.tmp}/kube-proxy.kubeconfig",
                "--proxy-mode=iptables",
                f"--hostname-override={NODE_NAME}",
                f"--cluster-cidr={POD_SUBNET}",
                "--healthz-bind-address=127.0.0.1:10256",
                "--metrics-bind-address=127.0.0.1:10249",
                "--conntrack-max-per-core=0",
                "--conntrack-tcp-timeout-established=0",
                "--conntrack-tcp-timeout-close-wait=0",
            ],
            env=env,
        )

    def _node_ready(self) -> bool:
        node = self.api_get(f"/api/v1/nodes/{NODE_NAME}")
        conds = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
        return conds.get("Ready") == "True"

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> Node:
        t0 = time.monotonic()
        for stale in reap_stale_sessions():
            log(f"removed the leftovers of a crashed session: {stale}")
        log(f"session folder {self.tmp}")
        self._start_holder()
        self._start_forwarder()
        self._start_containerd()
        self.timings["containerd_s"] = time.monotonic() - t0
        self.import_images()
        t1 = time.monotonic()
        self._make_pki()
        self._start_etcd()
        self._start_apiserver()
        self._wait(
            "the API server's /readyz",
            "kube-apiserver",
            lambda: self.api_get("/readyz") == "ok",
            90,
        )
        self.timings["apiserver_s"] = time.monotonic() - t1
        self._start_controllers()
        self._start_kubelet()
        self._start_kube_proxy()
        self._wait(f"node {NODE_NAME} Ready", "kubelet", self._node_ready, 120)
        self._wait(
            "kube-proxy's first sync",
            "kube-proxy",
            lambda: b"lastUpdated" in self.http_get("127.0.0.1", 10256, "/healthz"),
            60,
        )
        self.timings["control_plane_and_node_s"] = time.monotonic() - t1
        self.timings["start_total_s"] = time.monotonic() - t0
        assert self.pki is not None
        self.pki.kubeconfig("admin", f"https://127.0.0.1:{self.api_port}", self.kubeconfig)
        log("ready: " + ", ".join(f"{k}={v:.1f}" for k, v in self.timings.items()))
        return self

    def _cgroup_dirs(self) -> Iterator[Path]:
        """Every cgroup below our cgroup root, deepest first (dirs may vanish meanwhile)."""
        yield from _cgroup_tree(self.cgroup_root)

    def _kill_pods(self) -> None:
        _kill_cgroup_tree(self.cgroup_root)

    def _ns_pids(self) -> set[int]:
        """Processes in the node's mount namespace (daemons, container shims), not the holder.

        Once the namespace is empty the kernel may give its inode number to a new
        namespace (another program's ``unshare``), so after the holder is gone only
        processes born before ``self._ns_cutoff`` can be ours.
        """
        if not self._mntns:
            return set()
        holder = self.holder.pid if self.holder else -1
        pids = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != holder:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    if os.readlink(f"/proc/{entry}/ns/mnt") != self._mntns:
                        continue
                    if self._ns_cutoff is not None and _start_ticks(int(entry)) > self._ns_cutoff:
                        continue  # born after our namespace died: a reused inode number
                    pids.add(int(entry))
        return pids

    def _kill_ns_pids(self) -> None:
        quiet = 0
        for _ in range(100):
            left = self._ns_pids()
            quiet = 0 if left else quiet + 1
            if quiet >= 3:  # three empty scans in a row: nothing is still being born
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def leftovers(self) -> list[str]:
        """What stop() failed to remove: processes, cgroups, mounts, files. Empty is clean."""
        found = [f"process {pid} {_cmdline(pid)!r}" for pid in sorted(self._ns_pids())]
        found += [f"cgroup {d}" for d in self._cgroup_dirs()]
        with open("/proc/self/mounts") as f:
            found += [f"mount {line.split()[1]}" for line in f if str(self.tmp) in line]
        if self.tmp.exists():
            found.append(f"folder {self.tmp}")
        return found

    def stop(self) -> None:
        """Stop everything this node started; safe to call twice or after a failed start."""
        kubelet = self.procs.pop("kubelet", None)
        for proc in [p for p in [kubelet] if p] + list(reversed(self.procs.values())):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc is kubelet:
                self._kill_pods()
        self.procs.clear()
        self._kill_pods()
        self._kill_ns_pids()
        for proc in (self.forwarder, self.holder):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        self.forwarder = self.holder = None
        if self._mntns:
            self._ns_cutoff = _boot_ticks()
        self._kill_ns_pids()  # anything that was still forking while the holder went
        _remove_cgroup_tree(self.cgroup_root)
        if os.environ.get("THAW_NODE_KEEP"):
            log(f"keeping {self.tmp} (THAW_NODE_KEEP)")
        else:
            # Overlay snapshots hold root-owned read-only dirs; rm copes where rmtree may not.
            subprocess.run(["rm", "-rf", "--one-file-system", str(self.tmp)], check=False)

    def __enter__(self) -> Node:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def prepare(
    which: tuple[str, ...] = ("pause", "worker", "thaw", "thaw-agent"),
) -> tuple[Paths, dict[str, Any]]:
    """Run install.sh and the image builds (both cached); returns what Node needs."""
    repo = HERE.parents[1]
    node_root = Path(
        subprocess.run(
            [str(HERE / "install.sh")], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    built = subprocess.run(
        [sys.executable, str(HERE / "images.py"), "build", "--node-root", str(node_root), *which],
        check=True,
        capture_output=True,
        text=True,
        cwd=repo,
    )
    cache = Path(os.environ.get("THAW_CACHE", Path.home() / ".cache" / "thaw"))
    return Paths(node_root, cache / "kube-1.20.2" / "bin"), json.loads(built.stdout)


def main() -> int:
    """``cluster.py [up]``: start a node, print how to reach it, stop on Ctrl-C or SIGTERM.
    ``cluster.py reap``: remove what crashed sessions left behind."""
    cmd = sys.argv[1] if len(sys.argv) > 1 else "up"
    if cmd == "reap":
        for folder in reap_stale_sessions():
            print(f"removed {folder}")
        return 0
    if cmd != "up":
        print("usage: cluster.py [up|reap]", file=sys.stderr)
        return 2

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    paths, images = prepare()
    with Node(paths, images) as node:
        print(f"KUBECONFIG={node.kubeconfig}")
        for name, img in images.items():
            print(f"image {name}: {img['ref']}")
        holder = node.holder.pid if node.holder else "?"
        print(f"node namespaces: nsenter --target {holder} --net --mount", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
