"""End to end: `pinproxy import` and `pinproxy export` as a user runs them, and an imported
pinset enforced by the real proxy.

Every bad input is one line on stderr, exit 2, no traceback; a lossy conversion exits 1 unless
--allow-lossy, and still writes its output.
"""

from __future__ import annotations

import json
import plistlib
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import trustme
import yaml

from tests.certs import TrustedPki
from tests.conftest import Serve
from tests.proxy import REPO, curl, pinproxy_command, run_pinproxy, start_pinproxy

DATA = Path(__file__).parent / "data" / "formats"
NSC = DATA / "network_security_config.xml"
PINS = REPO / "config" / "pins.yaml"
X1 = "C5+lpZ7tcVwmwQIMcRtPbsQtWLABXhQzejna0wHFr8M="


def test_import_prints_the_pinset_reports_the_loss_and_exits_1() -> None:
    done = run_pinproxy("import", str(NSC))
    assert done.returncode == 1
    assert done.stdout.startswith("# Imported by `pinproxy import` from ")
    assert yaml.safe_load(done.stdout)["hosts"][0]["host"] == "shop.example.com"
    assert done.stderr.splitlines() == [
        f"{NSC}:50: note: 10.0.2.2 has no pins (its domain-config sets other things only): "
        "not imported",
        f"{NSC}:53: warning: <debug-overrides> apply only to debuggable builds, where they "
        "usually bypass pins; ignored",
        "pinproxy: 1 warning(s): the result is not a faithful copy; review it and pass "
        "--allow-lossy to accept it",
    ]


def test_import_with_allow_lossy_writes_a_pinset_that_check_accepts(tmp_path: Path) -> None:
    out = tmp_path / "pins.yaml"
    done = run_pinproxy("import", str(NSC), "--allow-lossy", "-o", str(out))
    assert (done.returncode, done.stdout) == (0, "")
    assert "warning: <debug-overrides>" in done.stderr
    checked = run_pinproxy("check", str(out))
    assert checked.returncode == 0, checked.stderr
    assert f"{out}: OK: 6 host rules, 12 pins" in checked.stdout


def test_import_reads_standard_input_and_a_faithful_import_exits_0() -> None:
    done = subprocess.run(pinproxy_command("import", "-"), cwd=REPO, capture_output=True,
                          text=True, timeout=30, check=False,
                          input=f'.add("**.api.example", "sha256/{X1}")\n')
    assert (done.returncode, done.stderr) == (0, "")
    assert "# from <stdin>:1: **.api.example" in done.stdout
    assert yaml.safe_load(done.stdout)["hosts"] == [
        {"host": "api.example", "include_subdomains": True, "pins": [f"sha256/{X1}"]}]


def load_export(fmt: str, text: str) -> object:
    """Parse an export the way its consumer would."""
    match fmt:
        case "android":
            return [d.text for d in ET.fromstring(text).iter("domain")]
        case "ios":
            data = plistlib.loads(text.encode())
            return sorted(data["NSAppTransportSecurity"]["NSPinnedDomains"])
        case "envoy":
            return sorted(yaml.safe_load(text))
        case "okhttp":
            return sorted({json.loads(line.strip()[5:-1].split(", ")[0])
                           for line in text.splitlines() if line.strip().startswith(".add(")})
        case _:
            return [line.partition(":")[0] for line in text.splitlines()
                    if not line.startswith("#")]


@pytest.mark.parametrize(("fmt", "hosts"), [
    ("android", ["api.payments.example", "internal.example"]),
    ("ios", ["api.payments.example", "internal.example"]),
    ("okhttp", ["*.internal.example", "api.payments.example"]),
    ("envoy", ["*.internal.example", "api.payments.example"]),
    ("hpkp", ["Public-Key-Pins", "Public-Key-Pins-Report-Only", "Public-Key-Pins"]),
])
def test_every_export_of_the_shipped_pinset_parses(fmt: str, hosts: list[str],
                                                   tmp_path: Path) -> None:
    out = tmp_path / f"pins.{fmt}"
    done = run_pinproxy("export", "--format", fmt, str(PINS), "-o", str(out), "--allow-lossy")
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
    assert "Traceback" not in done.stderr
    assert load_export(fmt, out.read_text()) == hosts


def test_export_that_leaves_something_out_exits_1_and_still_writes() -> None:
    done = run_pinproxy("export", "--format", "ios", str(PINS))
    assert done.returncode == 1
    assert plistlib.loads(done.stdout.encode())["NSAppTransportSecurity"]
    assert f"{PINS}:26: warning: bank.example is in report mode" in done.stderr


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "broken.xml").write_text(
        "<network-security-config>\n<domain-config>\n<domain>a.example</domain>\n"
        "</network-security-config>\n")
    (tmp_path / "short-pin.xml").write_text(
        "<network-security-config>\n<domain-config>\n<domain>a.example</domain>\n<pin-set>\n"
        '<pin digest="SHA-256">C5+lpZ7tcVwmwQIMcRtPbsQtWLABXhQz</pin>\n</pin-set>\n'
        "</domain-config>\n</network-security-config>\n")
    (tmp_path / "notes.txt").write_text("nothing to see here\n")
    return tmp_path


@pytest.mark.parametrize(("args", "line"), [
    (("import", "{dir}/broken.xml"),
     "pinproxy: {dir}/broken.xml:4: not well-formed XML: mismatched tag"),
    (("import", "{dir}/short-pin.xml"),
     "pinproxy: {dir}/short-pin.xml:5: pin 'sha256/C5+lpZ7tcVwmwQIMcRtPbsQtWLABXhQz' is not "
     "base64 of a 32-byte SHA-256 digest"),
    (("import", "{dir}/absent.xml"),
     "pinproxy: {dir}/absent.xml: cannot read: No such file or directory"),
    (("import", "{dir}/notes.txt"),
     "pinproxy: {dir}/notes.txt: cannot tell the format from the content; give --format "
     "android|ios|hpkp|okhttp"),
    (("import", str(NSC), "--format", "jks"),
     "pinproxy: unknown import format 'jks': choose android, ios, hpkp, okhttp"),
    (("import", str(NSC), "--host", "a.example"),
     f"pinproxy: --host names the host of HPKP headers, but {NSC} is read as Android network "
     "security config"),
    (("import", str(DATA / "hpkp-headers.txt")),
     f"pinproxy: {DATA / 'hpkp-headers.txt'}: HPKP headers do not name their host: give it "
     "with --host"),
    (("export", "--format", "jks", str(PINS)),
     "pinproxy: unknown export format 'jks': choose android, ios, okhttp, envoy, hpkp"),
    (("export", "--format", "android", "{dir}/absent.yaml"),
     "{dir}/absent.yaml: cannot read pinset: No such file or directory"),
    (("import", str(NSC), "-o", "{dir}/no/such/dir/pins.yaml"),
     "pinproxy: {dir}/no/such/dir/pins.yaml: cannot write: No such file or directory"),
])
def test_bad_input_is_one_line_and_exit_2(files: Path, args: tuple[str, ...], line: str) -> None:
    done = run_pinproxy(*(arg.format(dir=files) for arg in args))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    errors = [e for e in done.stderr.splitlines() if ": warning: " not in e and ": note: " not in e]
    assert errors == [line.format(dir=files)]


@pytest.mark.e2e
def test_imported_android_pins_are_enforced_by_the_proxy(
        tmp_path: Path, pki: TrustedPki, confdir: Path, serve: Serve,
        good_leaf: trustme.LeafCert, rogue_leaf: trustme.LeafCert) -> None:
    """The imported pinset is not just valid YAML: the real proxy enforces what Android would."""
    root = pki.root_pin.removeprefix("sha256/")
    (tmp_path / "nsc.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<network-security-config>\n<domain-config>\n'
        '<domain includeSubdomains="true">sub.pinned.test</domain>\n<pin-set>\n'
        f'<pin digest="SHA-256">{root}</pin>\n</pin-set>\n</domain-config>\n'
        "</network-security-config>\n")
    pinset = tmp_path / "pins.yaml"
    done = run_pinproxy("import", str(tmp_path / "nsc.xml"), "-o", str(pinset))
    assert (done.returncode, done.stderr) == (0, "")
    genuine, mis_issued = serve(good_leaf), serve(rogue_leaf)
    with start_pinproxy(pinset, confdir, pki.ca_bundle) as proxy:
        assert curl(proxy, "deep.down.sub.pinned.test", genuine.port).status == 200
        refused = curl(proxy, "deep.down.sub.pinned.test", mis_issued.port)
        assert refused.status == 502 and "reason: pin-mismatch" in refused.body
    assert mis_issued.received_bytes() == b""
