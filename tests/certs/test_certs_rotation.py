"""The in-cluster rotation plan, driven with real certificates through simulated years."""

from __future__ import annotations

import datetime as dt

import pytest

from certs import pki, rotation
from certs.rotation import SECRET_CA_BUNDLE, SECRET_CA_CERT, SECRET_TLS_CERT, plan

HOSTS = rotation.service_hosts("thaw-webhook", "thaw-system")
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_service_hosts():
    assert HOSTS == [
        "thaw-webhook",
        "thaw-webhook.thaw-system",
        "thaw-webhook.thaw-system.svc",
        "thaw-webhook.thaw-system.svc.cluster.local",
    ]


def test_empty_secret_gets_a_ca_and_serving_cert():
    p = plan(None, HOSTS, T0)
    assert p.changed and p.why == "new CA"
    assert pki.signed_by(p.data[SECRET_TLS_CERT], p.data[SECRET_CA_CERT])
    assert pki.covers_hosts(p.data[SECRET_TLS_CERT], HOSTS)
    assert p.ca_bundle == p.data[SECRET_CA_CERT]


def test_fresh_secret_is_left_alone():
    first = plan(None, HOSTS, T0)
    again = plan(first.data, HOSTS, T0 + dt.timedelta(days=30))
    assert not again.changed and again.data == first.data


def test_serving_cert_renewed_with_the_same_ca_before_expiry():
    first = plan(None, HOSTS, T0)
    later = plan(first.data, HOSTS, T0 + dt.timedelta(days=250))  # < 1/3 of 365 days left
    assert later.changed and later.why == "serving certificate near expiry"
    assert later.data[SECRET_CA_CERT] == first.data[SECRET_CA_CERT]
    assert later.data[SECRET_TLS_CERT] != first.data[SECRET_TLS_CERT]
    assert not pki.needs_rotation(later.data[SECRET_TLS_CERT], T0 + dt.timedelta(days=250))


def test_new_host_reissues_serving_cert():
    first = plan(None, HOSTS, T0)
    more = plan(first.data, [*HOSTS, "10.0.0.7"], T0)
    assert more.changed and "host" in more.why
    assert pki.covers_hosts(more.data[SECRET_TLS_CERT], [*HOSTS, "10.0.0.7"])


@pytest.mark.parametrize("field", ["tls.key", "tls.crt"])
def test_broken_serving_pair_is_replaced(field):
    first = plan(None, HOSTS, T0)
    other = pki.make_bundle(HOSTS, T0)
    broken = dict(first.data)
    broken[field] = other.tls_key if field == "tls.key" else other.tls_cert
    fixed = plan(broken, HOSTS, T0)
    assert fixed.changed
    assert pki.key_matches(fixed.data["tls.crt"], fixed.data["tls.key"])
    assert pki.signed_by(fixed.data["tls.crt"], first.data[SECRET_CA_CERT])


def test_ca_rotation_keeps_the_old_ca_trusted_until_it_expires():
    first = plan(None, HOSTS, T0)
    when = T0 + dt.timedelta(days=2500)  # CA (10 years) has < 1/3 left
    rotated = plan(first.data, HOSTS, when)
    assert rotated.changed and rotated.why == "CA rotated"
    new_ca = rotated.data[SECRET_CA_CERT]
    assert new_ca != first.data[SECRET_CA_CERT]
    assert pki.signed_by(rotated.data[SECRET_TLS_CERT], new_ca)
    bundle = rotation.still_valid_cas(rotated.ca_bundle, when)
    assert bundle == [new_ca, first.data[SECRET_CA_CERT]]

    steady = plan(rotated.data, HOSTS, when + dt.timedelta(days=1))
    assert not steady.changed and steady.data[SECRET_CA_BUNDLE] == rotated.ca_bundle

    after_old_expiry = T0 + dt.timedelta(days=3651)
    pruned = plan(steady.data, HOSTS, after_old_expiry)
    assert pruned.changed
    assert rotation.still_valid_cas(pruned.ca_bundle, after_old_expiry) == [new_ca]


def test_garbage_ca_is_replaced():
    first = plan(None, HOSTS, T0)
    data = dict(first.data)
    data[SECRET_CA_CERT] = b"junk"
    p = plan(data, HOSTS, T0)
    assert p.changed and pki.signed_by(p.data[SECRET_TLS_CERT], p.data[SECRET_CA_CERT])
