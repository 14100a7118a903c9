"""`pinproxy ca export|init`: the CA certificate out (never the key), an organisation's CA in,
and every refusal of `init`; end to end, a proxy signing with an installed CA."""

from __future__ import annotations

import datetime as dt
import os
import pty
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from pinproxy.cli import main
from tests.certs import TrustedPki
from tests.conftest import Serve
from tests.proxy import REPO, curl, pinproxy_command, run_pinproxy, start

KEY_FILE, CERT_FILE, CER_FILE = "mitmproxy-ca.pem", "mitmproxy-ca-cert.pem", "mitmproxy-ca-cert.cer"


@pytest.fixture(scope="module")
def org_ca() -> trustme.CA:
    return trustme.CA(organization_name="Example Org")


def write_ca(directory: Path, ca: trustme.CA) -> tuple[Path, Path]:
    cert, key = directory / "org-ca.pem", directory / "org-ca.key"
    ca.cert_pem.write_to_path(str(cert))
    ca.private_key_pem.write_to_path(str(key))
    return cert, key


def pinproxy(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(pinproxy_command(*args), cwd=REPO, capture_output=True, timeout=30,
                          stdin=subprocess.DEVNULL, check=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_installs_the_ca_in_the_layout_mitmproxy_reads(tmp_path: Path, org_ca: trustme.CA,
                                                            capsys: pytest.CaptureFixture[str],
                                                            ) -> None:
    cert, key = write_ca(tmp_path, org_ca)
    confdir = tmp_path / "confdir"
    assert main(["ca", "init", "--cert", str(cert), "--key", str(key),
                 "--confdir", str(confdir)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "installed the CA" in err and "PRIVATE" not in err
    assert mode(confdir) == 0o700 and mode(confdir / KEY_FILE) == 0o600
    assert mode(confdir / CERT_FILE) == mode(confdir / CER_FILE) == 0o644
    loaded = x509.load_pem_x509_certificate(org_ca.cert_pem.bytes())
    both = (confdir / KEY_FILE).read_bytes()
    # mitmproxy reads key and certificate from this one file (CertStore.from_files)
    assert x509.load_pem_x509_certificates(both) == [loaded]
    assert serialization.load_pem_private_key(both, None).public_key() == loaded.public_key()
    for name in (CERT_FILE, CER_FILE):
        assert x509.load_pem_x509_certificate((confdir / name).read_bytes()) == loaded
        assert b"PRIVATE" not in (confdir / name).read_bytes()


def test_init_reads_der_too(tmp_path: Path, org_ca: trustme.CA) -> None:
    loaded = x509.load_pem_x509_certificate(org_ca.cert_pem.bytes())
    key = serialization.load_pem_private_key(org_ca.private_key_pem.bytes(), None)
    cert_file, key_file = tmp_path / "ca.der", tmp_path / "ca.key.der"
    cert_file.write_bytes(loaded.public_bytes(serialization.Encoding.DER))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.DER,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    assert main(["ca", "init", "--cert", str(cert_file), "--key", str(key_file),
                 "--confdir", str(tmp_path / "c")]) == 0


def _certificate(directory: Path, *, ca: bool | None, usage_sign: bool | None = True,
                 days: int = 30) -> tuple[Path, Path]:
    """A self-signed certificate with the CA properties given (None: extension absent)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=60))
               .not_valid_after(now + dt.timedelta(days=days)))
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    if usage_sign is not None:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=usage_sign, crl_sign=usage_sign,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), True)
    cert = builder.sign(key, hashes.SHA256())
    cert_file, key_file = directory / "c.pem", directory / "k.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def _leaf(directory: Path, ca: trustme.CA) -> tuple[Path, Path]:
    leaf = ca.issue_cert("leaf.test")
    cert_file, key_file = directory / "leaf.pem", directory / "leaf.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert_file))
    leaf.private_key_pem.write_to_path(str(key_file))
    return cert_file, key_file


def _wrong_key(directory: Path, ca: trustme.CA) -> tuple[Path, Path]:
    cert, _ = write_ca(directory, ca)
    other = directory / "other.key"
    trustme.CA().private_key_pem.write_to_path(str(other))
    return cert, other


def _garbage_cert(directory: Path, ca: trustme.CA) -> tuple[Path, Path]:
    _, key = write_ca(directory, ca)
    (directory / "junk").write_bytes(b"\x00not a certificate")
    return directory / "junk", key


def _garbage_pem_key(directory: Path, ca: trustme.CA) -> tuple[Path, Path]:
    cert, _ = write_ca(directory, ca)
    (directory / "junk").write_text(
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    return cert, directory / "junk"


def _encrypted_key(directory: Path, ca: trustme.CA) -> tuple[Path, Path]:
    cert, key_file = write_ca(directory, ca)
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    return cert, key_file


def _missing(directory: Path, ca: trustme.CA) -> tuple[Path, Path]:
    _, key = write_ca(directory, ca)
    return directory / "absent.pem", key


Files = Callable[[Path, trustme.CA], tuple[Path, Path]]


@pytest.mark.parametrize(("files", "message"), [
    (_leaf, "--cert {cert}: not a CA certificate (BasicConstraints ca=False)"),
    (lambda d, _ca: _certificate(d, ca=None),
     "--cert {cert}: not a CA certificate (no BasicConstraints extension)"),
    (lambda d, _ca: _certificate(d, ca=True, usage_sign=False),
     "--cert {cert}: not a CA certificate (its KeyUsage lacks keyCertSign)"),
    (lambda d, _ca: _certificate(d, ca=True, days=-1), "--cert {cert}: expired on "),
    (_wrong_key, "--key {key}: not the key of the certificate {cert}"),
    (_garbage_cert, "--cert {cert}: not a PEM or DER certificate"),
    (_garbage_pem_key, "--key {key}: not a PEM or DER private key"),
    (_encrypted_key, "--key {key}: the key is encrypted; give it unencrypted"),
    (_missing, "--cert {cert}: No such file or directory"),
])
def test_init_refuses_with_one_line_and_writes_nothing(tmp_path: Path, org_ca: trustme.CA,
                                                       files: Files, message: str) -> None:
    cert, key = files(tmp_path, org_ca)
    confdir = tmp_path / "confdir"
    done = pinproxy("ca", "init", "--cert", str(cert), "--key", str(key),
                    "--confdir", str(confdir))
    assert done.returncode == 2 and done.stdout == b""
    err = done.stderr.decode()
    assert err.startswith("pinproxy: " + message.format(cert=cert, key=key))
    assert err.count("\n") == 1 and "PRIVATE" not in err and "Traceback" not in err
    assert not confdir.exists()


def test_the_twin_certificates_built_the_same_way_pass(tmp_path: Path) -> None:
    for ca in ({"ca": True}, {"ca": True, "usage_sign": None}):
        directory = tmp_path / str(len(list(tmp_path.iterdir())))
        directory.mkdir()
        cert, key = _certificate(directory, **ca)
        assert main(["ca", "init", "--cert", str(cert), "--key", str(key),
                     "--confdir", str(directory / "c")]) == 0


def test_init_refuses_an_existing_ca_unless_forced(tmp_path: Path, org_ca: trustme.CA) -> None:
    confdir = tmp_path / "confdir"
    assert pinproxy("ca", "export", "--confdir", str(confdir)).returncode == 0  # makes a CA
    before = (confdir / KEY_FILE).read_bytes()
    cert, key = write_ca(tmp_path, org_ca)
    done = pinproxy("ca", "init", "--cert", str(cert), "--key", str(key),
                    "--confdir", str(confdir))
    assert done.returncode == 2
    assert done.stderr.decode() == (f"pinproxy: --confdir {confdir}: already has a CA "
                                    f"({KEY_FILE}); give --force to replace it\n")
    assert (confdir / KEY_FILE).read_bytes() == before
    forced = pinproxy("ca", "init", "--cert", str(cert), "--key", str(key),
                      "--confdir", str(confdir), "--force")
    assert forced.returncode == 0
    assert (confdir / CERT_FILE).read_bytes() == org_ca.cert_pem.bytes()
    assert mode(confdir / KEY_FILE) == 0o600


@pytest.mark.parametrize("fmt", ["pem", "der", "p12"])
def test_export_writes_the_certificate_and_never_the_key(tmp_path: Path, org_ca: trustme.CA,
                                                         fmt: str) -> None:
    cert, key = write_ca(tmp_path, org_ca)
    confdir = tmp_path / "confdir"
    assert main(["ca", "init", "--cert", str(cert), "--key", str(key),
                 "--confdir", str(confdir)]) == 0
    expected = x509.load_pem_x509_certificate(org_ca.cert_pem.bytes())
    out_file = tmp_path / f"out.{fmt}"
    to_stdout = pinproxy("ca", "export", "--confdir", str(confdir), "--format", fmt)
    assert to_stdout.returncode == 0 and to_stdout.stderr == b""
    assert pinproxy("ca", "export", "--confdir", str(confdir), "--format", fmt,
                    "-o", str(out_file)).returncode == 0
    data = to_stdout.stdout
    if fmt == "p12":  # its MAC is salted afresh each time: compare what it holds
        assert _p12_certificate(out_file.read_bytes()) == expected
    else:
        assert out_file.read_bytes() == data
    if fmt == "pem":
        assert x509.load_pem_x509_certificates(data) == [expected]
    elif fmt == "der":
        assert x509.load_der_x509_certificate(data) == expected
    else:
        assert _p12_certificate(data) == expected
    secret = serialization.load_pem_private_key(org_ca.private_key_pem.bytes(), None)
    for encoding in (serialization.Encoding.DER, serialization.Encoding.PEM):
        assert secret.private_bytes(encoding, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()) not in data
    assert b"PRIVATE" not in data


def _p12_certificate(data: bytes) -> x509.Certificate:
    """The one certificate of a PKCS#12 file that must hold no key (so no "cert with key")."""
    bundle = pkcs12.load_pkcs12(data, None)
    assert bundle.key is None and bundle.cert is None
    [only] = bundle.additional_certs
    assert only.friendly_name == b"pinproxy CA"
    return only.certificate


def test_export_creates_a_missing_ca_and_says_so(tmp_path: Path) -> None:
    confdir = tmp_path / "new"
    done = pinproxy("ca", "export", "--confdir", str(confdir))
    assert done.returncode == 0
    assert done.stderr.decode() == f"pinproxy: created a new CA in {confdir}\n"
    assert x509.load_pem_x509_certificate(done.stdout) == x509.load_pem_x509_certificate(
        (confdir / CERT_FILE).read_bytes())
    again = pinproxy("ca", "export", "--confdir", str(confdir))  # the twin: exists, no notice
    assert again.stderr == b"" and again.stdout == done.stdout


@pytest.mark.parametrize(("fmt", "refused"), [("der", True), ("p12", True), ("pem", False)])
def test_export_writes_no_binary_to_a_terminal(tmp_path: Path, fmt: str, refused: bool) -> None:
    main_fd, terminal = pty.openpty()
    try:
        done = subprocess.run(pinproxy_command("ca", "export", "--confdir", str(tmp_path),
                                               "--format", fmt),
                              cwd=REPO, stdout=terminal, stderr=subprocess.PIPE, timeout=30,
                              check=False)
    finally:
        os.close(terminal)
        os.close(main_fd)
    assert done.returncode == (2 if refused else 0)
    if refused:
        assert done.stderr.decode().endswith(
            f"pinproxy: --format {fmt} is binary: give -o FILE, or redirect standard output\n")


def test_ca_alone_shows_its_help() -> None:
    done = run_pinproxy("ca")
    assert done.returncode == 2 and "export" in done.stdout and "init" in done.stdout


# -- end to end ----------------------------------------------------------------------------

@pytest.mark.e2e
def test_a_proxy_signs_with_the_installed_ca(tmp_path: Path, org_ca: trustme.CA,
                                             pki: TrustedPki, serve: Serve,
                                             good_leaf: trustme.LeafCert) -> None:
    cert, key = write_ca(tmp_path, org_ca)
    confdir = tmp_path / "confdir"
    assert main(["ca", "init", "--cert", str(cert), "--key", str(key),
                 "--confdir", str(confdir)]) == 0
    pinset = tmp_path / "pins.yaml"
    pinset.write_text("version: 1\nunpinned: block\nhosts:\n  - host: root.pinned.test\n"
                      f"    pins: [\"{pki.root_pin}\"]\n")
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with start(pinproxy_command("run", "--pinset", str(pinset), "--listen-port", "0",
                                "--confdir", str(confdir), "--upstream-ca", str(pki.ca_bundle),
                                "--admin-listen", "off"), confdir) as proxy:
        assert proxy.ca_cert.read_bytes() == org_ca.cert_pem.bytes()
        server = serve(good_leaf)
        # curl trusts the org CA (the confdir's certificate): through to the pinned host
        assert curl(proxy, "root.pinned.test", server.port).status == 200
        # its twin: curl trusting another CA refuses the proxy's certificate
        refused = curl(proxy, "root.pinned.test", server.port, "/", "--cacert", str(other))
        assert refused.status == 0 and refused.exit_code == 60
    assert (confdir / KEY_FILE).read_bytes().count(b"PRIVATE KEY-----") == 2  # not regenerated
