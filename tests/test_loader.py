"""Tests of `pinproxy.loader`: YAML pinset files -> `Pinset`, or every problem with its line.

Each error class is a pair: a file with exactly one thing wrong, and the same file with that
thing fixed, which must load. Problems are asserted by exact line number, in file order.
"""

from __future__ import annotations

import base64
import hashlib
import textwrap
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pinproxy.errors import PinsetError, Problem
from pinproxy.loader import format_duration, load_pinset, parse_duration, parse_pinset
from pinproxy.pins import Pin, PinKind, parse_pin
from pinproxy.pinset import HostRule, Location, Mode, Pinset, Unpinned
from tests import certs

HELLO = "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="  # base64(sha256("hello"))
EMPTY = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="  # base64(sha256(""))
P = f"sha256/{HELLO}"
B = f"sha256/{EMPTY}"
ALIAS_MESSAGE = "YAML anchors and aliases are not supported in a pinset"


def yaml_text(text: str) -> str:
    """Dedent, and drop the first newline so that line 1 is the first line written."""
    return textwrap.dedent(text).removeprefix("\n")


def write(directory: Path, text: str | bytes, name: str = "pins.yaml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(yaml_text(text), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[tuple[int, str]]:
    """`PinsetError.problems` of a file, as (line, message); each names the file and a line."""
    with pytest.raises(PinsetError) as e:
        load_pinset(path)
    found = []
    for problem in e.value.problems:
        line = problem.location.line
        assert problem.location.path == str(path) and line is not None, problem
        assert "\n" not in problem.message
        assert str(problem) == f"{path}:{line}: {problem.message}"
        found.append((line, problem.message))
    assert str(e.value) == "\n".join(str(problem) for problem in e.value.problems)
    return found


def assert_problems(path: Path, expected: list[tuple[int, str]]) -> None:
    """Exactly these problems, in this order; each message contains its fragment."""
    found = problems_of(path)
    assert [line for line, _ in found] == [line for line, _ in expected], found
    for (_, message), (_, fragment) in zip(found, expected, strict=True):
        assert fragment in message, (message, fragment)


# -- a valid file --------------------------------------------------------------------------

def test_valid_file_round_trip_every_field(tmp_path: Path) -> None:
    pki = certs.pki()
    write(tmp_path, pki.root_pem.decode(), "certs/root.pem")
    hex_colons = ":".join(f"{b:02X}" for b in hashlib.sha256(b"hello").digest())
    other = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    path = write(tmp_path, f"""
        # comment lines count
        version: 1
        mode: report
        unpinned: block
        hosts:
          - host: API.Example.
            include_subdomains: true
            mode: enforce
            expires: 2027-12-31
            pins:
              - {P}
              - sha256//{EMPTY}
              - pin-sha256="{other}"
              - cert-sha256/{hex_colons}
          - host: "*.bücher.example"
            pins: [file:certs/root.pem]
          - host: 10.0.0.1
            include_subdomains: false
            expires: "2030-01-01"
            pins:
              - '{P}'
    """)
    pinset = load_pinset(path)
    src = str(path)
    assert pinset == Pinset(rules=(
        HostRule(
            host="api.example",
            pins=(parse_pin(P), parse_pin(B), parse_pin(f"sha256/{other}"),
                  Pin(PinKind.CERTIFICATE, hashlib.sha256(b"hello").digest())),  # as written
            location=Location(src, 6), include_subdomains=True, mode=Mode.ENFORCE,
            expires=date(2027, 12, 31)),
        HostRule(host="*.xn--bcher-kva.example", pins=(pki.chain[2].spki,),
                 location=Location(src, 15), include_subdomains=False,
                 mode=Mode.REPORT,  # inherited from the top-level mode
                 expires=None),
        HostRule(host="10.0.0.1", pins=(parse_pin(P),), location=Location(src, 17),
                 include_subdomains=False, mode=Mode.REPORT, expires=date(2030, 1, 1)),
    ), source=src, mode=Mode.REPORT, unpinned=Unpinned.BLOCK)
    assert str(pinset.rules[0].location) == f"{path}:6"
    assert pinset.pin_count == 6


def test_defaults_are_enforce_and_unpinned_allow(tmp_path: Path) -> None:
    pinset = load_pinset(write(tmp_path, f"""
        version: 1
        hosts:
          - host: api.example
            pins: [{P}]
    """))
    assert (pinset.mode, pinset.unpinned) == (Mode.ENFORCE, Unpinned.ALLOW)
    [rule] = pinset.rules
    assert (rule.mode, rule.include_subdomains, rule.expires) == (Mode.ENFORCE, False, None)


# -- file: pins ----------------------------------------------------------------------------

def test_file_pins_are_relative_to_the_pinset_directory(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pki = certs.pki()
    conf = tmp_path / "conf"
    write(conf, pki.bundle_pem.decode(), "certs/bundle.pem")
    write(conf, certs.der_of(pki.root_pem), "certs/root.der")
    key = x509.load_pem_x509_certificate(pki.intermediate_pem).public_key()
    write(conf, key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode(),
          "keys/backup.pub")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a relative path must not depend on the working directory
    pinset = load_pinset(write(conf, """
        version: 1
        hosts:
          - host: bundle.example
            pins: [file:certs/bundle.pem]
          - host: der.example
            pins: ["file: certs/root.der"]
          - host: key.example
            pins: [file:keys/backup.pub]
    """))
    bundle, der, key_rule = pinset.rules
    assert set(bundle.pins) == {cert.spki for cert in pki.chain}  # every key in the bundle
    assert der.pins == (pki.chain[2].spki,)
    assert key_rule.pins == (pki.chain[1].spki,)


def test_file_pins_are_not_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, certs.pki().root_pem.decode(), "certs/root.pem")  # beside the cwd only
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "conf", """
        version: 1
        hosts:
          - host: api.example
            pins:
              - file:certs/root.pem
    """)
    missing = tmp_path / "conf" / "certs" / "root.pem"
    assert_problems(path, [(5, f"pin file {str(missing)!r}: No such file or directory")])


def test_a_pin_file_with_no_key_names_the_file_at_the_pin_line(tmp_path: Path) -> None:
    write(tmp_path, "not a certificate\n", "certs/junk.pem")
    path = write(tmp_path, """
        version: 1
        hosts:
          - host: api.example
            pins:
              - file:certs/junk.pem
    """)
    assert_problems(path, [(5, f"{tmp_path / 'certs' / 'junk.pem'}: not a PEM or DER")])


# -- one test per error class, each with its fixed twin ------------------------------------

GOOD = f"""
    version: 1
    hosts:
      - host: api.example
        pins: [{P}]
"""

CASES: list[tuple[str, str, str, list[tuple[int, str]]]] = [
    # (id, bad file, the same file fixed, expected problems)
    ("malformed-yaml", f"""
        version: 1
        hosts:
          - host: api.example: oops
            pins: [{P}]
    """, GOOD, [(3, "not valid YAML: mapping values are not allowed")]),
    ("unclosed-flow-list", f"""
        version: 1
        hosts:
          - host: api.example
            pins: [{P}
    """, GOOD, [(5, "not valid YAML")]),
    ("duplicate-top-level-key", f"""
        version: 1
        version: 1
        hosts:
          - host: api.example
            pins: [{P}]
    """, GOOD, [(2, "duplicate key 'version' in the pinset (first at line 1)")]),
    ("duplicate-rule-key", f"""
        version: 1
        hosts:
          - host: api.example
            pins: [{P}]
            host: other.example
    """, GOOD, [(5, "duplicate key 'host' in a host rule (first at line 3)")]),
    ("duplicate-top-level-block-key", f"""
        version: 1
        hosts:
          - host: api.example
            pins: [{P}]
        hosts:
          - host: other.example
            pins: [{P}]
    """, GOOD, [(5, "duplicate key 'hosts' in the pinset (first at line 2)")]),
    ("duplicate-rule-block-key", f"""
        version: 1
        hosts:
          - host: api.example
            pins:
              - {P}
            pins:
              - {B}
    """, GOOD, [(6, "duplicate key 'pins' in a host rule (first at line 4)")]),
    ("unknown-top-level-key", f"""
        version: 1
        hosts:
          - host: api.example
            pins: [{P}]
        report_url: https://example.com/
    """, GOOD, [(5, "unknown key 'report_url' in the pinset; expected hosts, mode, "
                    "on_expiry, report_dedupe, report_uri, serial, unpinned, valid_until, "
                    "version")]),
    ("unknown-rule-key", f"""
        version: 1
        hosts:
          - host: api.example
            include_subdomain: true
            pins: [{P}]
    """, GOOD, [(4, "unknown key 'include_subdomain' in a host rule")]),
    ("key-not-a-name", f"""
        version: 1
        1: one
        hosts:
          - host: api.example
            pins: [{P}]
    """, GOOD, [(2, "the pinset has a key that is not a name: '1'")]),
    ("merge-key", f"""
        version: 1
        hosts:
          - host: api.example
            <<: {{include_subdomains: true}}
            pins: [{P}]
    """, GOOD, [(4, "a host rule has a key that is not a name: '<<'")]),
    ("top-level-not-a-mapping", f"""
        - version: 1
        - hosts: [{P}]
    """, GOOD, [(1, "the pinset must be a mapping of keys, not a list")]),
    ("hosts-not-a-list", f"""
        version: 1
        hosts:
          host: api.example
          pins: [{P}]
    """, GOOD, [(3, "'hosts' must be a list of host rules, not a mapping")]),
    ("hosts-empty-value", """
        version: 1
        hosts:
    """, GOOD, [(2, "'hosts' must be a list of host rules, not an empty value")]),
    ("rule-not-a-mapping", """
        version: 1
        hosts:
          - api.example
    """, GOOD, [(3, "a host rule must be a mapping of keys, not a string 'api.example'")]),
    ("pins-a-string", f"""
        version: 1
        hosts:
          - host: api.example
            pins: {P}
    """, GOOD, [(4, f"'pins' must be a list of pins, not a string {P!r}")]),
    ("pin-a-mapping", f"""
        version: 1
        hosts:
          - host: api.example
            pins:
              - sha256: {HELLO}
    """, GOOD, [(5, "a pin must be a string, not a mapping")]),
    ("host-a-number", f"""
        version: 1
        hosts:
          - host: 443
            pins: [{P}]
    """, GOOD, [(3, "'host' must be a string, not the YAML number '443'")]),
    ("version-a-string", f"""
        version: "1"
        hosts:
          - host: api.example
            pins: [{P}]
    """, GOOD, [(1, "'version' must be a number, not a string '1'")]),
    ("mode-off", f"""
        version: 1
        mode: off
        hosts:
          - host: api.example
            pins: [{P}]
    """, GOOD.replace("version: 1", "version: 1\n    mode: enforce"),
     [(2, "'mode' must be one of 'enforce' or 'report', not the YAML boolean 'off'; quote it")]),
    ("unpinned-no", f"""
        version: 1
        unpinned: no
        hosts:
          - host: api.example
            pins: [{P}]
    """, GOOD.replace("version: 1", "version: 1\n    unpinned: block"),
     [(2, "'unpinned' must be one of 'allow' or 'block' or 'learn', not the YAML boolean 'no'")]),
    ("rule-mode-off", f"""
        version: 1
        hosts:
          - host: api.example
            mode: off
            pins: [{P}]
    """, GOOD, [(4, "'mode' must be one of 'enforce' or 'report', not the YAML boolean 'off'")]),
    ("mode-unknown-word", f"""
        version: 1
        mode: strict
        hosts:
          - host: api.example
            pins: [{P}]
    """, GOOD, [(2, "'mode' must be 'enforce' or 'report', not 'strict'")]),
    ("include-subdomains-yes", f"""
        version: 1
        hosts:
          - host: api.example
            include_subdomains: yes
            pins: [{P}]
    """, GOOD.replace("host: api.example", "host: api.example\n        include_subdomains: true"),
     [(4, "'include_subdomains' must be true or false, not 'yes'")]),
    ("include-subdomains-quoted", f"""
        version: 1
        hosts:
          - host: api.example
            include_subdomains: "true"
            pins: [{P}]
    """, GOOD.replace("host: api.example", "host: api.example\n        include_subdomains: false"),
     [(4, "'include_subdomains' must be true or false, not 'true'")]),
    ("bad-pin", f"""
        version: 1
        hosts:
          - host: api.example
            pins:
              - {P}
              - sha256/a
    """, GOOD, [(6, "pin 'sha256/a' is not base64 of a 32-byte SHA-256 digest")]),
    ("sha1-pin", """
        version: 1
        hosts:
          - host: api.example
            pins:
              - sha1/DmxUShsZuNiqPQsX2Oi9uv2sCnw=
    """, GOOD, [(5, "pin 'sha1/DmxUShsZuNiqPQsX2Oi9uv2sCnw=' uses the unsupported prefix")]),
    ("empty-pin-list", """
        version: 1
        hosts:
          - host: api.example
            pins: []
    """, GOOD, [(4, "api.example has an empty 'pins' list")]),
    ("unknown-version", f"""
        version: 2
        hosts:
          - host: api.example
            pins: [{P}]
    """, GOOD, [(1, "unsupported pinset version '2'")]),
    ("missing-version", f"""
        hosts:
          - host: api.example
            pins: [{P}]
    """, GOOD, [(1, "the pinset is missing the key 'version'")]),
    ("missing-hosts", """
        # a comment first
        version: 1
        mode: enforce
    """, GOOD, [(2, "the pinset is missing the key 'hosts'")]),
    ("missing-host", f"""
        version: 1
        hosts:
          - pins: [{P}]
            include_subdomains: true
    """, GOOD, [(3, "a host rule is missing the key 'host'")]),
    ("missing-pins", """
        version: 1
        hosts:
          - host: api.example
    """, GOOD, [(3, "a host rule is missing the key 'pins'")]),
    ("two-documents", f"""
        version: 1
        hosts: []
        ---
        version: 1
        hosts:
          - host: api.example
            pins: [{P}]
    """, GOOD, [(3, "a pinset is one YAML document, and a second one starts here")]),
    ("empty-file", "", GOOD, [(1, "the pinset is empty")]),
    ("comments-only", """
        # version: 1
        # hosts: []
    """, GOOD, [(1, "the pinset is empty")]),
    ("second-rule-same-host", f"""
        version: 1
        hosts:
          - host: api.example
            pins: [{P}]
          - host: API.Example.
            pins: [{B}]
    """, GOOD, [(5, "host 'api.example' has a second rule; the first is at line 3")]),
    ("star-in-the-middle", f"""
        version: 1
        hosts:
          - host: api.*.example
            pins: [{P}]
    """, GOOD, [(3, "host 'api.*.example': '*' is allowed only as a whole leftmost label")]),
    ("star-as-tld", f"""
        version: 1
        hosts:
          - host: example.*
            pins: [{P}]
    """, GOOD, [(3, "'*' is allowed only as a whole leftmost label")]),
    ("double-star", f"""
        version: 1
        hosts:
          - host: "**.example.co.uk"
            pins: [{P}]
    """, GOOD, [(3, "'*' is allowed only as a whole leftmost label")]),
    ("star-inside-a-label", f"""
        version: 1
        hosts:
          - host: "*api.example"
            pins: [{P}]
    """, GOOD, [(3, "'*' is allowed only as a whole leftmost label")]),
    ("invalid-host", f"""
        version: 1
        hosts:
          - host: -api.example
            pins: [{P}]
    """, GOOD, [(3, "host '-api.example' is not a valid host name")]),
    ("ip-with-include-subdomains", f"""
        version: 1
        hosts:
          - host: 10.0.0.1
            include_subdomains: true
            pins: [{P}]
    """, GOOD.replace("api.example", "10.0.0.1"),
     [(3, "host '10.0.0.1' is an IP address: it takes neither '*.' nor include_subdomains")]),
    ("ip-with-wildcard", f"""
        version: 1
        hosts:
          - host: "*.10.0.0.1"
            pins: [{P}]
    """, GOOD.replace("api.example", "10.0.0.1"), [(3, "is an IP address")]),
    ("ipv6-with-include-subdomains", f"""
        version: 1
        hosts:
          - host: "[::1]"
            include_subdomains: true
            pins: [{P}]
    """, GOOD.replace("api.example", "'[::1]'"), [(3, "is an IP address")]),
    ("impossible-date", f"""
        version: 1
        hosts:
          - host: api.example
            expires: 2027-02-30
            pins: [{P}]
    """, GOOD.replace("host: api.example", "host: api.example\n        expires: 2027-02-28"),
     [(4, "'expires' must be a date written YYYY-MM-DD, not '2027-02-30'")]),
    ("date-in-words", f"""
        version: 1
        hosts:
          - host: api.example
            expires: next year
            pins: [{P}]
    """, GOOD, [(4, "'expires' must be a date written YYYY-MM-DD, not 'next year'")]),
    ("date-with-time", f"""
        version: 1
        hosts:
          - host: api.example
            expires: 2027-01-01T10:00:00Z
            pins: [{P}]
    """, GOOD, [(4, "'expires' must be a date written YYYY-MM-DD")]),
    ("missing-pin-file", """
        version: 1
        hosts:
          - host: api.example
            pins:
              - file:certs/missing.pem
    """, GOOD, [(5, "missing.pem': No such file or directory")]),
    ("alias-of-a-rule", f"""
        version: 1
        hosts:
          - &rule
            host: api.example
            pins: [{P}]
          - *rule
    """, GOOD, [(6, ALIAS_MESSAGE)]),  # reported where the alias stands
    ("alias-of-a-pin", f"""
        version: 1
        hosts:
          - host: api.example
            pins: [&pin {P}]
          - host: other.example
            pins: [*pin]
    """, GOOD, [(6, ALIAS_MESSAGE)]),
    # -- the keys of a signed pinset: serial and valid_until --------------------------------
    *[(f"serial-{name}", f"""
        version: 1
        serial: {value}
        hosts: []
    """, """
        version: 1
        serial: 0
        hosts: []
    """, [(2, f"'serial' must be a whole number from 0 to {2**63 - 1}, not {shown!r}")])
      for name, value, shown in [("negative", "-1", "-1"), ("quoted", '"7"', "7"),
                                 ("float", "1.5", "1.5"), ("hex", "0x10", "0x10"),
                                 ("too-big", str(2**63), str(2**63)),
                                 ("list", "[1]", "a list")]],
    *[(f"valid-until-{name}", f"""
        version: 1
        valid_until: {value}
        hosts: []
    """, f"""
        version: 1
        valid_until: {good}
        hosts: []
    """, [(2, "'valid_until' must be a timestamp with a time zone (2027-01-31T12:00:00Z) or a "
              f"date (YYYY-MM-DD), not {shown!r}")])
      for name, value, good, shown in [
          ("no-time-zone", "2027-01-31T12:00:00", "2027-01-31T12:00:00Z", "2027-01-31T12:00:00"),
          ("words", "next week", "2027-01-31", "next week"),
          ("no-such-day", "2027-02-30", "2027-02-28", "2027-02-30"),
          ("no-seconds", "2027-01-31T12:00Z", "2027-01-31T12:00:00+02:00", "2027-01-31T12:00Z"),
          ("number", "20270131", "2027-01-31 12:00:00.5z", "20270131"),
      ]],
    ("report-uri-http-to-a-remote-host", f"""
        version: 1
        report_uri: http://collector.example/r
        hosts:
          - host: api.example
            pins: [{P}]
    """, GOOD, [(2, "'report_uri' 'http://collector.example/r' is http:// to a host that is not"
                    " loopback")]),
    ("report-uri-of-a-rule", f"""
        version: 1
        hosts:
          - host: api.example
            report_uri: https://user:pw@collector.example/r
            pins: [{P}]
    """, GOOD, [(4, "'report_uri' 'https://user:pw@collector.example/r' must not hold "
                    "credentials")]),
    ("report-uri-not-text", f"""
        version: 1
        report_uri: [https://c.example/]
        hosts:
          - host: api.example
            pins: [{P}]
    """, GOOD, [(2, "'report_uri' must be an https:// URL, not a list")]),
    ("report-dedupe-words", f"""
        version: 1
        report_dedupe: one day
        hosts:
          - host: api.example
            pins: [{P}]
    """, GOOD, [(2, "'report_dedupe' must be a duration such as 24h, 30m, 90s or 7d")]),
    ("report-dedupe-too-long", f"""
        version: 1
        report_dedupe: 367d
        hosts:
          - host: api.example
            pins: [{P}]
    """, GOOD, [(2, "'report_dedupe' must be a duration")]),
    ("report-dedupe-per-rule", f"""
        version: 1
        hosts:
          - host: api.example
            report_dedupe: 1h
            pins: [{P}]
    """, GOOD, [(4, "unknown key 'report_dedupe' in a host rule")]),
]


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800), ("0", 0),
])
def test_report_dedupe_durations(text: str, seconds: int) -> None:
    loaded = parse_pinset(f"version: 1\nreport_dedupe: {text}\nhosts: []\n")
    assert loaded.report_dedupe == seconds
    assert parse_duration(format_duration(seconds)) == seconds


def test_report_uri_defaults_and_the_rule_override() -> None:
    loaded = parse_pinset(f"""\
version: 1
report_uri: https://c.example/r
hosts:
  - host: a.example
    report_uri: http://[::1]:9/a
    pins: [{P}]
  - host: b.example
    pins: [{P}]
""")
    a, b = loaded.rules
    assert loaded.report_uri_for(a) == "http://[::1]:9/a"
    assert loaded.report_uri_for(b) == loaded.report_uri_for(None) == "https://c.example/r"
    assert loaded.report_dedupe == 86400
    # the twin: without report_uri nothing is reported anywhere
    assert parse_pinset(f"version: 1\nhosts:\n  - host: a.example\n    pins: [{P}]\n"
                        ).report_uri_for(None) is None


@pytest.mark.parametrize(("bad", "good", "expected"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_error_class(tmp_path: Path, bad: str, good: str,
                     expected: list[tuple[int, str]]) -> None:
    assert isinstance(load_pinset(write(tmp_path, good, "good.yaml")), Pinset)
    assert_problems(write(tmp_path, bad, "bad.yaml"), expected)


@pytest.mark.parametrize(("text", "serial", "valid_until"), [
    ("", None, None),
    ("serial: 0\n", 0, None),
    ("serial: 42\nvalid_until: 2027-01-31T12:00:00Z\n", 42,
     datetime(2027, 1, 31, 12, tzinfo=UTC)),
    ("valid_until: 2027-01-31T14:00:00+02:00\n", None, datetime(2027, 1, 31, 12, tzinfo=UTC)),
    ('valid_until: "2027-01-31T12:00:00.250Z"\n', None,
     datetime(2027, 1, 31, 12, 0, 0, 250000, tzinfo=UTC)),
    # a date is valid to its end, UTC
    ("valid_until: 2027-01-31\n", None, datetime(2027, 1, 31, 23, 59, 59, 999999, tzinfo=UTC)),
])
def test_signed_pinset_keys(text: str, serial: int | None,
                            valid_until: datetime | None) -> None:
    pinset = parse_pinset(f"version: 1\n{text}hosts: []\n")
    assert pinset.serial == serial
    assert pinset.valid_until == valid_until
    assert valid_until is None or (
        pinset.valid_until is not None and pinset.valid_until.tzinfo is not None)


def test_file_pins_load_unless_refused(tmp_path: Path) -> None:
    write(tmp_path, certs.pki().root_pem.decode(), "root.pem")
    path = write(tmp_path, """
        version: 1
        hosts:
          - host: api.example
            pins: ["file:root.pem"]
    """)
    assert load_pinset(path).rules[0].pins
    with pytest.raises(PinsetError, match="not allowed in a signed pinset"):
        load_pinset(path, allow_files=False)


@pytest.mark.parametrize("version", ["0x2", "1:0", "!!int one", "0b10"])
def test_unusual_yaml_integers_as_version_are_problems_not_crashes(tmp_path: Path,
                                                                    version: str) -> None:
    # YAML 1.1 tags these as integers, but they are not decimal: int() alone cannot read them.
    path = write(tmp_path, f"""
        version: {version}
        hosts:
          - host: api.example
            pins: [{P}]
    """)
    [(line, _)] = problems_of(path)
    assert line == 1


@pytest.mark.parametrize(("key", "anchored", "aliased"), [
    ("include_subdomains", "&yes true", "*yes"),
    ("expires", "&day 2027-01-01", "*day"),
    ("mode", "&m report", "*m"),
])
def test_every_alias_is_refused(tmp_path: Path, key: str, anchored: str, aliased: str) -> None:
    path = write(tmp_path, f"""
        version: 1
        hosts:
          - host: api.example
            {key}: {anchored}
            pins: [{P}]
          - host: other.example
            {key}: {aliased}
            pins: [{P}]
    """)
    found = problems_of(path)
    assert [message for _, message in found] == [ALIAS_MESSAGE]
    assert found[0][0] in (4, 7)  # the anchor or the alias


def test_an_anchor_without_an_alias_is_harmless(tmp_path: Path) -> None:
    pinset = load_pinset(write(tmp_path, f"""
        version: 1
        hosts:
          - host: api.example
            include_subdomains: &yes true
            pins: [&pin {P}]
    """))
    assert pinset.rules[0].include_subdomains is True


# -- files that cannot be read -------------------------------------------------------------

def test_a_non_utf8_file(tmp_path: Path) -> None:
    path = write(tmp_path, f"version: 1\nhosts:\n  - host: caf\xe9.example\n    pins: [{P}]\n"
                 .encode("latin-1"))
    with pytest.raises(PinsetError) as e:
        load_pinset(path)
    [problem] = e.value.problems
    assert problem == Problem(Location(str(path), 3), "cannot read pinset: it is not UTF-8"
                                                     " text (invalid trailing UTF-8 octet)")
    assert str(problem) == (f"{path}:3: cannot read pinset: it is not UTF-8 text (invalid "
                            "trailing UTF-8 octet)")
    with pytest.raises(PinsetError) as e:  # the same from bytes in memory
        parse_pinset(path.read_bytes(), "p.yaml")
    assert str(e.value) == (
        "p.yaml:3: cannot read pinset: it is not UTF-8 text (invalid trailing UTF-8 octet)")
    # twin: the same file in UTF-8 loads
    path.write_text(f"version: 1\nhosts:\n  - host: caf\xe9.example\n    pins: [{P}]\n",
                    encoding="utf-8")
    assert load_pinset(path).rules[0].host == "xn--caf-dma.example"


def test_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(PinsetError) as e:
        load_pinset(path)
    assert e.value.problems == (
        Problem(Location(str(path)), "cannot read pinset: No such file or directory"),)
    # a problem without a line renders as `path: message`
    assert str(e.value) == f"{path}: cannot read pinset: No such file or directory"


def test_a_directory(tmp_path: Path) -> None:
    with pytest.raises(PinsetError) as e:
        load_pinset(tmp_path)
    [problem] = e.value.problems
    assert problem.location == Location(str(tmp_path))
    assert str(problem).startswith(f"{tmp_path}: cannot read pinset: ")


# -- many problems at once -----------------------------------------------------------------

def test_every_problem_is_reported_in_file_order(tmp_path: Path) -> None:
    # Written so the loader meets them out of order: it reads 'version' and 'mode' before
    # 'hosts', and a rule's 'host' before its 'pins' and 'expires'.
    path = write(tmp_path, f"""
        hosts:
          - host: a.example
            pins: [sha256/a]
          - expires: never
            pins: [md5/abc]
            host: "b.*.example"
          - host: c.example
            pins: [{P}]
            colour: blue
          - host: C.example.
            pins: [{B}]
          - host: d.example
            pins: []
        mode: off
        version: 2
    """)
    assert_problems(path, [
        (3, "pin 'sha256/a' is not base64"),
        (4, "'expires' must be a date"),
        (5, "pin 'md5/abc' uses the unsupported prefix"),
        (6, "'*' is allowed only as a whole leftmost label"),
        (9, "unknown key 'colour' in a host rule"),
        (10, "host 'c.example' has a second rule; the first is at line 7"),
        (13, "d.example has an empty 'pins' list"),
        (14, "'mode' must be one of 'enforce' or 'report'"),
        (15, "unsupported pinset version '2'"),
    ])


def test_rules_take_the_pinset_mode_written_after_the_hosts(tmp_path: Path) -> None:
    """Rules are read while the file streams in, before a later `mode:` is known."""
    path = write(tmp_path, f"""
        version: 1
        hosts:
          - host: a.example
            pins: [{P}]
          - host: b.example
            mode: enforce
            pins: [{P}]
        mode: report
    """)
    pinset = load_pinset(path)
    assert [(r.host, r.mode) for r in pinset.rules] == [
        ("a.example", Mode.REPORT), ("b.example", Mode.ENFORCE)]
