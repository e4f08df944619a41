"""``thaw certs generate`` input checks: lifetimes and host names, one line, exit 2, no files."""

from __future__ import annotations

import pytest
from cryptography import x509

from certs import pki
from thaw.cli import main


def generate(tmp_path, capsys, *args: str) -> tuple[int, str]:
    rc = main(["certs", "generate", "--out", str(tmp_path / "out"), *args])
    return rc, capsys.readouterr().err


def sans(pem: bytes) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem)
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return [str(n.value) for n in ext.value]


@pytest.mark.parametrize("days", ["0", "-1", "-36500", "3651", "99999999999"])
def test_days_out_of_range_are_refused_before_writing(tmp_path, capsys, days):
    rc, err = generate(tmp_path, capsys, "--hosts", "webhook.example", "--days", days)
    assert rc == 2 and err.count("\n") == 1 and "--days must be 1 to 3650" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("days", ["1", "3650"])
def test_days_at_the_bounds_are_fine(tmp_path, capsys, days):
    rc, _ = generate(tmp_path, capsys, "--hosts", "webhook.example", "--days", days)
    assert rc == 0 and (tmp_path / "out" / "tls.crt").exists()


def test_non_positive_lifetime_is_a_cert_error():
    ca_cert, ca_key = pki.make_ca()
    with pytest.raises(pki.CertError, match="lifetime"):
        pki.make_serving(ca_cert, ca_key, ["a.example"], lifetime=pki.dt.timedelta(0))


def test_international_names_become_a_labels(tmp_path, capsys):
    rc, err = generate(tmp_path, capsys, "--hosts", "Bücher.example,*.straße.example")
    assert rc == 0, err
    got = sans((tmp_path / "out" / "tls.crt").read_bytes())
    assert got == ["xn--bcher-kva.example", "*.xn--strae-oqa.example"]  # IDNA 2008 keeps ß


@pytest.mark.parametrize(
    "host",
    [
        "☃.example",  # not allowed in IDNA 2008
        "a..b",
        "example.com.",
        "-lead.example",
        "trail-.example",
        "under_score.example",
        "a" * 64 + ".example",
        ".".join(["abcdefghij"] * 25),  # 274 characters
        "*",
        "*.com",
        "a.*.example",
        "*foo.example",
        "foo.*",
        "1.2.3",  # neither an IP nor a name with a non-numeric top label
        "fe80::1%eth0",
        "http://x",
    ],
)
def test_invalid_names_are_refused_in_one_line(tmp_path, capsys, host):
    with pytest.raises(pki.CertError):
        pki.split_hosts([host])
    rc, err = generate(tmp_path, capsys, "--hosts", f"ok.example,{host}")
    assert rc == 2 and err.count("\n") == 1 and err.startswith("thaw: ")
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("host", "san"),
    [
        ("*.thaw-webhook.thaw-system.svc", "*.thaw-webhook.thaw-system.svc"),
        ("Thaw-Webhook.Thaw-System.svc", "thaw-webhook.thaw-system.svc"),
        ("localhost", "localhost"),
        ("10.0.0.1", "10.0.0.1"),
        ("[::1]", "::1"),
        ("0abc.example", "0abc.example"),
    ],
)
def test_valid_names_and_ips(host, san):
    (name,) = pki.split_hosts([host])
    assert str(name.value) == san
