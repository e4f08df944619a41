"""/readyz waits for a loaded certificate and a synced snapshot cache."""

from __future__ import annotations

import asyncio
import time

from kubernetes import client

from certs import files, pki
from webhook.config import InjectConfig
from webhook.server import make_app
from webhook.snapshots import ClusterSnapshots, NoSnapshots


async def test_not_ready_until_the_certificate_loads(aiohttp_client, tmp_path):
    cert = files.ServingCert(tmp_path / "tls.crt", tmp_path / "tls.key")
    cert.reload_if_changed()
    app = make_app(InjectConfig(), NoSnapshots(), serving_cert=cert, cert_check_interval_s=0.05)
    http = await aiohttp_client(app)
    resp = await http.get("/readyz")
    assert resp.status == 503 and "no certificate loaded" in await resp.text()
    files.write_bundle(tmp_path, pki.make_bundle(["127.0.0.1"]))
    deadline = time.monotonic() + 5
    while (await http.get("/readyz")).status != 200:
        assert time.monotonic() < deadline, "certificate never picked up"
        await asyncio.sleep(0.05)


async def test_not_ready_while_the_snapshot_cache_has_not_listed(aiohttp_client):
    """An API server that cannot be reached: the watch keeps retrying, readyz says why."""
    cfg = client.Configuration()
    cfg.host = "https://127.0.0.1:9"  # discard port: connection refused
    view = ClusterSnapshots(client.ApiClient(cfg))
    view.start()
    try:
        http = await aiohttp_client(make_app(InjectConfig(), view))
        resp = await http.get("/readyz")
        assert resp.status == 503 and "snapshots not synced" in await resp.text()
        assert (await http.get("/healthz")).status == 200
    finally:
        view.stop()
