"""The warm signal: readinessProbe translation and the thaw.dev/ warm, engine and window
annotations, through the real decide() and mutation, down to what the sidecar parses."""

from __future__ import annotations

import copy

import pytest
from webhook_support import load_case, write_manifest

from thaw import contract
from webhook.config import InjectConfig
from webhook.decision import Reason, decide
from webhook.mutate import inject
from webhook.snapshots import DirectorySnapshots, NoSnapshots

POD = load_case("checkpoint-native")["review"]["request"]["object"]
NS = "inference"


def pod(probe: object = "keep", **annotations: str) -> dict:
    """The golden vLLM pod (named port ``http`` = 8000); ``probe=None`` removes its probe."""
    p = copy.deepcopy(POD)
    p["metadata"]["annotations"] = annotations
    server = p["spec"]["containers"][0]
    if probe is None:
        del server["readinessProbe"]
    elif probe != "keep":
        server["readinessProbe"] = probe
    return p


def sidecar_env(p: dict, snapshots=None) -> dict[str, str]:
    out = inject(p, NS, InjectConfig(), snapshots or NoSnapshots())
    assert out.decision.inject, out.decision.message()
    sidecar = next(
        c for c in out.pod["spec"]["initContainers"] if c["name"] == contract.SIDECAR_CONTAINER
    )
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in sidecar["env"]}


def probe_of(p: dict) -> contract.WarmProbe:
    """What the sidecar reads back from the env the webhook wrote."""
    return contract.WarmProbe.from_json(sidecar_env(p)[contract.ENV_WARM_PROBE])


def skipped(p: dict) -> tuple[Reason, str]:
    d = decide(p, NS, InjectConfig(), NoSnapshots())
    assert not d.inject
    return d.reason, d.detail


def test_http_probe_on_a_named_port_reaches_the_sidecar():
    assert probe_of(pod()) == contract.WarmProbe(
        port=8000, scheme="http", path="/health", period_s=5, timeout_s=1
    )
    env = sidecar_env(pod())
    assert env[contract.ENV_CHECKPOINT_WINDOW] == str(contract.DEFAULT_CHECKPOINT_WINDOW_S)
    assert env[contract.ENV_POD_IP] == {
        "fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}
    }
    assert contract.ENV_ENGINE_SLEEP_URL not in env  # no engine named: no sleep/wake


def test_http_probe_keeps_scheme_host_headers_and_timing():
    probe = {
        "httpGet": {
            "scheme": "HTTPS",
            "host": "10.1.2.3",
            "port": 8443,
            "path": "ready?deep=1",
            "httpHeaders": [
                {"name": "Host", "value": "llm.local"},
                {"name": "X-Probe", "value": ""},
            ],
        },
        "initialDelaySeconds": 30,
        "periodSeconds": 2,
        "timeoutSeconds": 3,
        "successThreshold": 2,
        "failureThreshold": 7,
    }
    assert probe_of(pod(probe)) == contract.WarmProbe(
        port=8443,
        scheme="https",
        path="/ready?deep=1",
        host="10.1.2.3",
        headers=(("Host", "llm.local"), ("X-Probe", "")),
        period_s=2,
        timeout_s=3,
        success_threshold=2,
        failure_threshold=7,
        initial_delay_s=30,
    )


@pytest.mark.parametrize("port", [8000, "http", "8000"])
def test_tcp_probe_by_number_name_or_digits(port):
    got = probe_of(pod({"tcpSocket": {"port": port}}))
    assert got == contract.WarmProbe(port=8000)  # kubelet defaults, tcp (no scheme)
    assert got.scheme == "" and got.host == ""


def test_probe_without_timing_gets_kubelet_defaults():
    got = probe_of(pod({"httpGet": {"port": "http"}}))
    assert (got.path, got.period_s, got.timeout_s) == ("/", 10, 1)
    assert (got.success_threshold, got.failure_threshold, got.initial_delay_s) == (1, 3, 0)


@pytest.mark.parametrize(
    "probe, handler",
    [
        ({"exec": {"command": ["cat", "/tmp/ready"]}}, "exec"),
        ({"grpc": {"port": 9000}}, "grpc"),
    ],
)
def test_exec_and_grpc_probes_are_unsupported(probe, handler):
    reason, detail = skipped(pod(probe))
    assert reason is Reason.PROBE_UNSUPPORTED
    assert f"uses {handler}" in detail and "thaw.dev/warm: hook" in detail


def test_no_probe_is_no_warm_signal_and_says_what_to_add():
    reason, detail = skipped(pod(None))
    assert reason is Reason.NO_WARM_SIGNAL
    assert "readinessProbe" in detail and "thaw.dev/warm: hook" in detail
    assert skipped(pod({}))[0] is Reason.PROBE_UNSUPPORTED  # a probe with no handler at all


@pytest.mark.parametrize(
    "probe, needle",
    [
        ({"httpGet": {"port": "metrics"}}, "'metrics' is not among the container's ports"),
        ({"httpGet": {"port": 70000}}, "out of range"),
        ({"tcpSocket": {"port": 0}}, "out of range"),
        ({"tcpSocket": {"port": True}}, "not a number or a port name"),
        ({"tcpSocket": {}}, "not a number or a port name"),
        ({"httpGet": {"port": 80, "scheme": "FTP"}}, "not HTTP or HTTPS"),
        ({"httpGet": {"port": 80, "path": "/a b"}}, "not a URL path"),
        ({"httpGet": {"port": 80, "host": "a/b"}}, "not a host"),
        ({"httpGet": {"port": 80, "httpHeaders": [{"name": "X", "value": "a\nb"}]}}, "header"),
        ({"httpGet": {"port": 80, "httpHeaders": {"X": "y"}}}, "not a list"),
        ({"tcpSocket": {"port": 80}, "periodSeconds": 0}, "periodSeconds 0"),
        ({"tcpSocket": {"port": 80}, "successThreshold": "2"}, "successThreshold"),
        ({"httpGet": "http"}, "not an object"),
        ("ready", "not an object"),
    ],
)
def test_bad_probes_are_a_clear_skip(probe, needle):
    reason, detail = skipped(pod(probe))
    assert reason is Reason.BAD_PROBE and needle in detail, detail


def test_hook_engine_needs_no_probe_and_gets_none():
    for probe in (None, {"exec": {"command": ["true"]}}):
        env = sidecar_env(pod(probe, **{contract.ANNOTATION_WARM: "hook"}))
        assert contract.ENV_WARM_PROBE not in env and contract.ENV_ENGINE_SLEEP_URL not in env
        assert env[contract.ENV_CHECKPOINT_WINDOW] == "900"


@pytest.mark.parametrize(
    "engine, sleep, wake",
    [
        ("vllm", "/sleep?level=1", "/wake_up"),
        ("sglang", "/release_memory_occupation", "/resume_memory_occupation"),
    ],
)
def test_engine_presets_become_sleep_and_wake_paths(engine, sleep, wake):
    env = sidecar_env(pod(**{contract.ANNOTATION_ENGINE: engine}))
    assert env[contract.ENV_ENGINE_SLEEP_URL] == sleep
    assert env[contract.ENV_ENGINE_WAKE_URL] == wake


def test_explicit_paths_override_the_preset():
    env = sidecar_env(
        pod(
            **{contract.ANNOTATION_ENGINE: "vllm", contract.ANNOTATION_SLEEP_PATH: "/sleep?level=2"}
        )
    )
    assert env[contract.ENV_ENGINE_SLEEP_URL] == "/sleep?level=2"
    assert env[contract.ENV_ENGINE_WAKE_URL] == "/wake_up"
    env = sidecar_env(
        pod(**{contract.ANNOTATION_SLEEP_PATH: "/pause", contract.ANNOTATION_WAKE_PATH: "/go"})
    )
    assert (env[contract.ENV_ENGINE_SLEEP_URL], env[contract.ENV_ENGINE_WAKE_URL]) == (
        "/pause",
        "/go",
    )


@pytest.mark.parametrize(
    "annotations, needle",
    [
        ({contract.ANNOTATION_WARM: "ready"}, "expected probe or hook"),
        ({contract.ANNOTATION_ENGINE: "tgi"}, "expected vllm or sglang"),
        ({contract.ANNOTATION_SLEEP_PATH: "/sleep"}, "go together"),
        ({contract.ANNOTATION_WAKE_PATH: "/wake"}, "go together"),
        ({contract.ANNOTATION_SLEEP_PATH: "sleep", contract.ANNOTATION_WAKE_PATH: "/w"}, "path"),
        ({contract.ANNOTATION_CHECKPOINT_WINDOW: "0"}, "whole seconds"),
        ({contract.ANNOTATION_CHECKPOINT_WINDOW: "15m"}, "whole seconds"),
        ({contract.ANNOTATION_CHECKPOINT_WINDOW: "-5"}, "whole seconds"),
        ({contract.ANNOTATION_CHECKPOINT_WINDOW: "86401"}, "1 to 86400"),
        ({contract.ANNOTATION_WARM: "hook", contract.ANNOTATION_ENGINE: "vllm"}, "quiesces itself"),
    ],
)
def test_bad_annotations_are_a_clear_skip(annotations, needle):
    reason, detail = skipped(pod(**annotations))
    assert reason is Reason.BAD_ANNOTATION and needle in detail, detail


def test_window_annotation_reaches_the_sidecar():
    env = sidecar_env(pod(**{contract.ANNOTATION_CHECKPOINT_WINDOW: "1800"}))
    assert env[contract.ENV_CHECKPOINT_WINDOW] == "1800"


def test_restore_mode_sidecar_gets_probe_wake_and_restore_timeout(tmp_path):
    p = pod(**{contract.ANNOTATION_ENGINE: "vllm"})
    key = decide(p, NS, InjectConfig(), NoSnapshots()).key
    write_manifest(tmp_path, "snap", key, NS, "2026-11-20T00:00:00Z")
    out = inject(p, NS, InjectConfig(), DirectorySnapshots(tmp_path))
    assert out.decision.reason is Reason.RESTORE_SNAPSHOT_READY
    env = sidecar_env(p, DirectorySnapshots(tmp_path))
    assert env[contract.ENV_RESTORE_TIMEOUT] == str(InjectConfig().restore_timeout_s)
    assert env[contract.ENV_ENGINE_WAKE_URL] == "/wake_up"
    assert contract.WarmProbe.from_json(env[contract.ENV_WARM_PROBE]).port == 8000
    # The restore init step and the worker get no probe: only the sidecar runs it.
    restore = next(
        c for c in out.pod["spec"]["initContainers"] if c["name"] == contract.RESTORE_CONTAINER
    )
    worker = out.pod["spec"]["containers"][0]
    for c in (restore, worker):
        assert contract.ENV_WARM_PROBE not in {e["name"] for e in c["env"]}
    assert worker["readinessProbe"] == POD["spec"]["containers"][0]["readinessProbe"]


def test_warm_checks_come_after_the_pod_level_ones():
    """A pod that is skipped anyway keeps its older, more basic reason."""
    off = pod(None, **{contract.ANNOTATION_MODE: "off"})
    assert skipped(off)[0] is Reason.MODE_OFF
    nocmd = pod(None)
    del nocmd["spec"]["containers"][0]["command"]
    assert skipped(nocmd)[0] is Reason.NO_COMMAND


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[]", "JSON object"),
        ("{", "not valid JSON"),
        ('{"scheme": "http"}', "port"),
        ('{"port": 80, "period_s": NaN}', "period_s"),
        ('{"port": 80, "timeout_s": 0}', "timeout_s"),
        ('{"port": 80, "headers": [["a"]]}', "headers"),
        ('{"port": 80, "scheme": "ftp"}', "scheme"),
        ('{"port": "80"}', "port"),
    ],
)
def test_sidecar_side_parsing_names_the_bad_field(text, needle):
    with pytest.raises(contract.ProbeError, match=needle):
        contract.WarmProbe.from_json(text)
