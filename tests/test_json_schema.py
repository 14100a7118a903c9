"""`pinproxy schema`: a valid draft 2020-12 schema that agrees with the loader.

Documents are read as an editor's YAML 1.2 parser reads them (only `true`/`false` are booleans,
no timestamps), validated with `jsonschema`, and loaded with `pinproxy.loader`; each row of the
table says what both must answer. The few rows where they differ are the checks only the loader
can make, and say so.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pinproxy import loader
from pinproxy.errors import PinsetError
from pinproxy.json_schema import PINSET_SCHEMA
from tests import certs
from tests.proxy import REPO, run_pinproxy

VALIDATOR = jsonschema.Draft202012Validator(PINSET_SCHEMA)
CHAIN = certs.pki("schema").chain
ROOT = str(CHAIN[-1].spki)
B64 = ROOT.removeprefix("sha256/")
CERT_B64 = str(CHAIN[0].certificate).removeprefix("cert-sha256/")
CERT_HEX = CHAIN[0].certificate.digest.hex()
CERT_HEX_COLONS = ":".join(f"{byte:02X}" for byte in CHAIN[0].certificate.digest)
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# The same 32 bytes with the two unused bits of the last character set: not canonical base64.
NOT_CANONICAL = B64[:42] + _ALPHABET[_ALPHABET.index(B64[42]) + 1] + "="


class Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 core schema, as yaml-language-server reads a file: `off`, `yes` and dates are
    strings, only `true`/`false` are booleans."""

    yaml_implicit_resolvers = {}  # noqa: RUF012  (PyYAML's own class attribute, emptied)


for _tag, _pattern, _first in [
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    ("float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
              r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789."),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
]:
    Yaml12Loader.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_pattern),
                                       list(_first))


def yaml12(text: str) -> Any:
    return yaml.load(text, Loader=Yaml12Loader)  # a SafeLoader subclass: no arbitrary objects


def schema_accepts(text: str) -> bool:
    return bool(VALIDATOR.is_valid(yaml12(text)))


def loader_accepts(text: str, base_dir: Path) -> bool:
    try:
        loader.parse_pinset(text, "t.yaml", base_dir=base_dir)
    except PinsetError:
        return False
    return True


V1 = "version: 1"


def doc(hosts: str, top: str = "version: 1") -> str:
    return f"{top}\nhosts:\n{textwrap.indent(textwrap.dedent(hosts), '  ')}"


def host_rule(host: str, *extra: str, pins: str = f'["{ROOT}"]') -> str:
    lines = [f"- host: {host}", *(f"  {line}" for line in extra), f"  pins: {pins}"]
    return "\n".join(lines) + "\n"


EVERYTHING = doc(
    host_rule("api.example.com", pins=f'["{ROOT}", "sha256//{B64}", "SHA256/{B64}", '
                                      f"'pin-sha256=\"{B64}\"', 'pin-sha256 = {B64}', "
                                      f'"cert-sha256/{CERT_B64}", "cert-sha256/{CERT_HEX}", '
                                      f'"cert-sha256/{CERT_HEX_COLONS}", '
                                      '"file:root.pem", "file: root.pem"]')
    + host_rule('"*.example.com"', "include_subdomains: false", "mode: report",
                "expires: 2027-12-31")
    + host_rule("bank.example", "include_subdomains: true")
    + host_rule('"*.internal.example"', "include_subdomains: true")
    + host_rule("Bücher.Example.", "mode: enforce")
    + host_rule("xn--bcher-kva.example.org")
    + host_rule("192.0.2.10", "include_subdomains: false")
    + host_rule('"[2001:db8::1]"')
    + host_rule('"2001:db8::2"')
    + host_rule('"::ffff:192.0.2.1"')
    + host_rule("localhost"),
    top="version: 1\nmode: enforce\nunpinned: block")

# (id, document, loader accepts, schema accepts)
AGREE: list[tuple[str, str, bool]] = [
    ("everything", EVERYTHING, True),
    ("no-hosts", "version: 1\nhosts: []\n", True),
    ("missing-version", "hosts: []\n", False),
    ("missing-hosts", "version: 1\n", False),
    ("version-2", "version: 2\nhosts: []\n", False),
    ("version-string", 'version: "1"\nhosts: []\n', False),
    ("mode-off", "version: 1\nmode: off\nhosts: []\n", False),
    ("mode-unknown", "version: 1\nmode: strict\nhosts: []\n", False),
    ("unpinned-no", "version: 1\nunpinned: no\nhosts: []\n", False),
    ("unknown-top-key", "version: 1\nreport_uri: x\nhosts: []\n", False),
    ("hosts-mapping", "version: 1\nhosts:\n  host: api.example\n", False),
    ("hosts-empty-value", "version: 1\nhosts:\n", False),
    ("rule-a-string", doc("- api.example\n"), False),
    ("unknown-rule-key", doc(host_rule("api.example", "include_subdomain: true")), False),
    ("missing-pins", doc("- host: api.example\n"), False),
    ("missing-host", doc(f'- pins: ["{ROOT}"]\n'), False),
    ("include-yes", doc(host_rule("api.example", "include_subdomains: yes")), False),
    ("include-quoted", doc(host_rule("api.example", 'include_subdomains: "true"')), False),
    ("rule-mode-off", doc(host_rule("api.example", "mode: off")), False),
    ("pins-empty", doc(host_rule("api.example", pins="[]")), False),
    ("pins-a-string", doc(host_rule("api.example", pins=ROOT)), False),
    ("pin-a-mapping", doc(host_rule("api.example", pins=f"[{{sha256: {B64}}}]")), False),
    ("pin-short", doc(host_rule("api.example", pins='["sha256/a"]')), False),
    ("pin-not-canonical", doc(host_rule("api.example", pins=f'["sha256/{NOT_CANONICAL}"]')),
     False),
    ("pin-sha1", doc(host_rule("api.example",
                               pins='["sha1/DmxUShsZuNiqPQsX2Oi9uv2sCnw="]')), False),
    ("pin-no-prefix", doc(host_rule("api.example", pins=f'["{B64}"]')), False),
    ("pin-hpkp-single-quotes", doc(host_rule("api.example", pins=f"[\"pin-sha256='{B64}'\"]")),
     False),
    ("pin-cert-hex-short", doc(host_rule("api.example", pins=f'["cert-sha256/{CERT_HEX[:62]}"]')),
     False),
    ("pin-file-empty", doc(host_rule("api.example", pins='["file:"]')), False),
    ("host-a-number", doc(host_rule("443")), False),
    ("host-empty", doc(host_rule('""')), False),
    ("host-star-inside", doc(host_rule("api.*.example")), False),
    ("host-double-star", doc(host_rule('"**.example.co.uk"')), False),
    ("host-star-tld", doc(host_rule("example.*")), False),
    ("host-star-alone", doc(host_rule('"*"')), False),
    ("host-leading-hyphen", doc(host_rule("-api.example")), False),
    ("host-numeric-tld", doc(host_rule("example.123")), False),
    ("host-short-ipv4", doc(host_rule("127.1")), False),
    ("host-ipv4-leading-zero", doc(host_rule("10.0.0.01")), False),
    ("host-ipv6-two-gaps", doc(host_rule('"1::2::3"')), False),
    ("host-label-too-long", doc(host_rule(f"{'a' * 64}.example")), False),
    ("host-name-too-long", doc(host_rule(".".join(["a" * 63] * 4) + ".example")), False),
    ("wildcard-ip", doc(host_rule('"*.10.0.0.1"')), False),
    ("ip-include-subdomains", doc(host_rule("10.0.0.1", "include_subdomains: true")), False),
    ("ipv6-include-subdomains", doc(host_rule('"[::1]"', "include_subdomains: true")), False),
    ("expires-words", doc(host_rule("api.example", "expires: next year")), False),
    ("expires-with-time", doc(host_rule("api.example", "expires: 2027-01-01T10:00:00Z")), False),
    ("expires-month-13", doc(host_rule("api.example", "expires: 2027-13-01")), False),
    ("expires-number", doc(host_rule("api.example", "expires: 20271231")), False),
    ("serial", "version: 1\nserial: 7\nhosts: []\n", True),
    ("serial-zero", "version: 1\nserial: 0\nhosts: []\n", True),
    ("serial-negative", "version: 1\nserial: -1\nhosts: []\n", False),
    ("serial-string", 'version: 1\nserial: "7"\nhosts: []\n', False),
    ("serial-float", "version: 1\nserial: 7.5\nhosts: []\n", False),
    ("serial-too-big", f"version: 1\nserial: {2**63}\nhosts: []\n", False),
    ("valid-until-utc", "version: 1\nvalid_until: 2027-01-31T12:00:00Z\nhosts: []\n", True),
    ("valid-until-offset", "version: 1\nvalid_until: 2027-01-31T12:00:00.5-05:30\nhosts: []\n",
     True),
    ("valid-until-date", "version: 1\nvalid_until: 2027-01-31\nhosts: []\n", True),
    ("valid-until-no-zone", "version: 1\nvalid_until: 2027-01-31T12:00:00\nhosts: []\n", False),
    ("valid-until-words", "version: 1\nvalid_until: soon\nhosts: []\n", False),
    ("valid-until-number", "version: 1\nvalid_until: 20270131\nhosts: []\n", False),
    ("report-uri-https", doc(host_rule("a.example"), top=f"{V1}\nreport_uri: "
                                                         "https://c.example:8443/r?x=1"), True),
    ("report-uri-http-loopback", doc(host_rule("a.example", "report_uri: http://127.0.0.1:9/r"),
                                     top=f"{V1}\nreport_uri: http://[::1]/"), True),
    ("report-uri-http-localhost", doc(host_rule("a.example"),
                                      top=f"{V1}\nreport_uri: http://LOCALHOST:80/r"), True),
    ("report-uri-http-remote", doc(host_rule("a.example", "report_uri: http://c.example/")),
     False),
    ("report-uri-credentials", doc(host_rule("a.example"),
                                   top=f"{V1}\nreport_uri: https://u:p@c.example/"), False),
    ("report-uri-fragment", doc(host_rule("a.example"),
                                top=f"{V1}\nreport_uri: https://c.example/r#x"), False),
    ("report-uri-ftp", doc(host_rule("a.example"), top=f"{V1}\nreport_uri: ftp://c.example/"),
     False),
    ("report-uri-number", doc(host_rule("a.example", "report_uri: 12")), False),
    ("report-dedupe-units", doc(host_rule("a.example"), top=f"{V1}\nreport_dedupe: 30m"), True),
    ("report-dedupe-seconds", doc(host_rule("a.example"), top=f"{V1}\nreport_dedupe: 3600"),
     True),
    ("report-dedupe-words", doc(host_rule("a.example"), top=f"{V1}\nreport_dedupe: 2 hours"),
     False),
    ("report-dedupe-negative", doc(host_rule("a.example"), top=f"{V1}\nreport_dedupe: -5"),
     False),
    ("report-dedupe-on-a-rule", doc(host_rule("a.example", "report_dedupe: 1h")), False),
]

# Only the loader sees these: what a schema of the parsed document cannot express.
LOADER_ONLY: list[tuple[str, str]] = [
    ("duplicate-key", doc(host_rule("api.example", "mode: report", "mode: enforce"))),
    ("alias", doc(f"- host: api.example\n  pins: [&p {ROOT}]\n- host: b.example\n  pins: [*p]\n")),
    ("second-rule-for-a-host", doc(host_rule("api.example") + host_rule("API.example."))),
    ("date-that-does-not-exist", doc(host_rule("api.example", "expires: 2027-02-30"))),
    ("missing-pin-file", doc(host_rule("api.example", pins='["file:missing.pem"]'))),
    ("not-an-idna-name", doc(host_rule("☃.example"))),
    ("version-float", "version: 1.0\nhosts: []\n"),
    ("serial-hex", "version: 1\nserial: 0x10\nhosts: []\n"),
    ("valid-until-no-such-day", "version: 1\nvalid_until: 2027-02-30\nhosts: []\n"),
    ("report-dedupe-over-a-year", doc(host_rule("a.example"), top=f"{V1}\nreport_dedupe: 400d")),
]


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    (tmp_path / "root.pem").write_bytes(certs.pki("schema").root_pem)
    return tmp_path


@pytest.mark.parametrize(("text", "accepted"), [row[1:] for row in AGREE],
                         ids=[row[0] for row in AGREE])
def test_schema_and_loader_agree(text: str, accepted: bool, base_dir: Path) -> None:
    assert loader_accepts(text, base_dir) is accepted
    assert schema_accepts(text) is accepted


@pytest.mark.parametrize("text", [row[1] for row in LOADER_ONLY],
                         ids=[row[0] for row in LOADER_ONLY])
def test_what_only_the_loader_checks(text: str, base_dir: Path) -> None:
    assert schema_accepts(text)
    assert not loader_accepts(text, base_dir)


def test_the_shipped_pinset_is_valid() -> None:
    text = (REPO / "config" / "pins.yaml").read_text()
    assert schema_accepts(text)
    assert loader_accepts(text, REPO / "config")


def test_the_schema_names_every_key_the_loader_reads() -> None:
    assert set(PINSET_SCHEMA["properties"]) == loader._TOP_KEYS
    rule = PINSET_SCHEMA["$defs"]["hostRule"]
    assert set(rule["properties"]) == loader._RULE_KEYS
    assert PINSET_SCHEMA["additionalProperties"] is False
    assert rule["additionalProperties"] is False


def test_every_key_says_what_it_does() -> None:
    rule = PINSET_SCHEMA["$defs"]["hostRule"]
    described = [*PINSET_SCHEMA["properties"].values(), *PINSET_SCHEMA["$defs"].values(),
                 *(value for value in rule["properties"].values() if "$ref" not in value)]
    assert all(len(node["description"]) > 30 for node in described)


def test_errors_point_at_the_bad_value() -> None:
    [error] = VALIDATOR.iter_errors(yaml12(doc(host_rule("api.example", "mode: off"))))
    assert list(error.absolute_path) == ["hosts", 0, "mode"]


@pytest.fixture(scope="module")
def printed_schema() -> dict[str, Any]:
    done = run_pinproxy("schema")
    assert done.returncode == 0
    assert done.stdout.isascii()
    printed: dict[str, Any] = json.loads(done.stdout)
    return printed


def test_cli_prints_the_schema_and_it_is_valid_draft_2020_12(
        printed_schema: dict[str, Any]) -> None:
    assert printed_schema == PINSET_SCHEMA
    jsonschema.Draft202012Validator.check_schema(printed_schema)
    assert printed_schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize(("text", "accepted"), [row[1:] for row in AGREE],
                         ids=[row[0] for row in AGREE])
def test_the_printed_schema_answers_as_the_loader_does(
        text: str, accepted: bool, printed_schema: dict[str, Any], base_dir: Path) -> None:
    """What an editor gets from `pinproxy schema` (not the in-memory dict) agrees with the loader,
    under draft 2020-12 and under draft-07, where yaml-language-server stops: the schema must use
    no keyword whose meaning changed after draft-07."""
    draft_07 = jsonschema.Draft7Validator({k: v for k, v in printed_schema.items()
                                           if k != "$schema"})
    assert loader_accepts(text, base_dir) is accepted
    assert jsonschema.Draft202012Validator(printed_schema).is_valid(yaml12(text)) is accepted
    assert draft_07.is_valid(yaml12(text)) is accepted
