"""Tests of `pinproxy.formats.okhttp`: CertificatePinner pairs <-> pinset.

OkHttp's `*.` and `**.` patterns are checked with the real policy on real certificates, and its
union of matching patterns is carried into the pinset on import and reported on export.
"""

from __future__ import annotations

import textwrap
from datetime import date
from pathlib import Path

import pytest

from pinproxy.errors import FormatError
from pinproxy.formats import export_pinset, import_pins
from pinproxy.loader import parse_pinset
from pinproxy.pinset import Location, Pinset
from pinproxy.policy import Action, Reason, decide
from tests import certs

KOTLIN = Path(__file__).parent / "data" / "formats" / "CertificatePinner.kt"
X1 = "sha256/C5+lpZ7tcVwmwQIMcRtPbsQtWLABXhQzejna0wHFr8M="
X2 = "sha256/diGVwiVYbubAI3RW4hB9xU8e/CH2GnkuvVFZE8zmgzI="
GTS = "sha256/hxqRlPTu1bMS/0DITB1SSu0vd4u/8l8TjPgfaAp63Gc="
EMPTY = "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
AMAZON = "sha256/++MBgDH5WGvL9Bcn5Be30cRcL0f5O+NyoXuWtQdX1aI="
TODAY = date(2026, 1, 1)


def summary(pinset_yaml: str) -> set[tuple[str, frozenset[str], bool]]:
    pinset = parse_pinset(pinset_yaml)
    return {(r.host, frozenset(str(p) for p in r.pins), r.include_subdomains)
            for r in pinset.rules}


def test_kotlin_builder_imports_with_the_union_of_matching_patterns() -> None:
    result = import_pins(KOTLIN.read_bytes(), "Pinning.kt")
    assert summary(result.text) == {
        # OkHttp also accepts the **.shop.example.com pins here: the import keeps that
        ("api.shop.example.com", frozenset({X1, X2, GTS, EMPTY}), False),
        ("shop.example.com", frozenset({GTS, EMPTY}), True),
        ("*.cdn.example.net", frozenset({AMAZON}), False),
        # the commented-out .add("old.example.com", ...) is not imported
    }
    assert "also pinned by **.shop.example.com" in result.text
    assert [str(n) for n in result.notices] == [
        "Pinning.kt:17: warning: *.cdn.example.net: sha1 pin 'sha1/DmxUShsZuNiqPQsX2Oi9uv2sCnw=' "
        "cannot be mapped (pinproxy pins are SHA-256 digests); left out"]


@pytest.mark.parametrize("line", [
    f"api.example {X1} {X2}",
    f"api.example, {X1}, {X2}",
    f'"api.example" "{X1}" "{X2}"  // comment',
    f'    .add("api.example", "{X1}", "{X2}")',
    f'CertificatePinner.Builder().add("api.example", "{X1}").add("api.example", "{X2}").build()',
    f"api.example sha256//{X1[7:]} {X2}  # curl's spelling of a pin",
])
def test_accepted_spellings(line: str) -> None:
    result = import_pins(f"# pins\n{line}\n".encode(), "pins.txt", "okhttp")
    assert summary(result.text) == {("api.example", frozenset({X1, X2}), False)}
    assert result.notices == ()


@pytest.mark.parametrize(("line", "message"), [
    (f"example.* {X1}", "pins.txt:1: host 'example.*': '*' is allowed only as a whole leftmost "
                        "label, as in '*.example.com'"),
    ("api.example md5/DmxUShsZuNiqPQsX2Oi9uv2sCnw=",
     "pins.txt:1: pin 'md5/DmxUShsZuNiqPQsX2Oi9uv2sCnw=': OkHttp accepts only 'sha256/' and "
     "'sha1/' pins"),
    ("api.example sha256/a", "pins.txt:1: pin 'sha256/a' is not base64 of a 32-byte SHA-256 "
                             "digest"),
    (f'.add("a..example", "{X1}")', "pins.txt:1: host 'a..example' is not a valid host name "
                                     "or IP address"),
])
def test_rejected_pairs_name_their_line(line: str, message: str) -> None:
    with pytest.raises(FormatError) as raised:
        import_pins(f"{line}\n".encode(), "pins.txt", "okhttp")
    assert str(raised.value) == message


@pytest.mark.parametrize("line", [
    '.add("api.example", PIN_CONSTANT)',
    f"api.example {X1} and more",
])
def test_a_line_that_mentions_pins_but_is_not_understood_is_reported(line: str) -> None:
    result = import_pins(f'.add("ok.example", "{X1}")\n{line}\n'.encode(), "pins.txt", "okhttp")
    assert summary(result.text) == {("ok.example", frozenset({X1}), False)}
    assert [(n.location, n.lossy) for n in result.notices] == [(Location("pins.txt", 2), True)]
    assert result.notices[0].message.startswith("line not understood")


def test_double_star_covers_the_apex_and_every_depth_single_star_one_label() -> None:
    genuine, mis_issued = certs.pki("a"), certs.pki("b")
    root = str(genuine.chain[-1].spki)
    text = f'.add("**.{certs.HOST}", "{root}")\n.add("*.one.example", "{root}")\n'
    pinset = parse_pinset(import_pins(text.encode(), "pins.txt", "okhttp").text)
    for name in (certs.HOST, f"a.{certs.HOST}", f"a.b.c.{certs.HOST}", "x.one.example"):
        assert decide(pinset, [name], genuine.chain, TODAY).action is Action.ALLOW
        assert decide(pinset, [name], mis_issued.chain, TODAY).reason is Reason.PIN_MISMATCH
    for name in ("one.example", "a.b.one.example", f"not{certs.HOST}"):
        assert decide(pinset, [name], mis_issued.chain, TODAY).reason is Reason.NOT_PINNED


def pinset(body: str) -> Pinset:
    return parse_pinset("version: 1\nhosts:\n" + textwrap.dedent(body), "pins.yaml")


def test_export_maps_each_pattern_and_round_trips() -> None:
    source = pinset(f"""\
        - host: api.example
          pins: ["{X1}", "{X2}"]
        - host: all.example
          include_subdomains: true
          pins: ["{GTS}"]
        - host: "*.one.example"
          pins: ["{AMAZON}"]
        """)
    exported = export_pinset(source, "okhttp")
    assert exported.notices == ()
    assert [line.strip() for line in exported.text.splitlines() if ".add(" in line] == [
        f'.add("api.example", "{X1}")', f'.add("api.example", "{X2}")',
        f'.add("**.all.example", "{GTS}")', f'.add("*.one.example", "{AMAZON}")']
    assert exported.text.rstrip().endswith(".build()")
    again = import_pins(exported.text.encode(), "Pinning.kt")
    assert summary(again.text) == {("api.example", frozenset({X1, X2}), False),
                                   ("all.example", frozenset({GTS}), True),
                                   ("*.one.example", frozenset({AMAZON}), False)}


@pytest.mark.parametrize(("narrow_pins", "warned"), [([X1], True), ([X1, GTS], False)])
def test_export_reports_where_okhttps_union_accepts_more_than_the_pinset(
        narrow_pins: list[str], warned: bool) -> None:
    pins = ", ".join(f'"{p}"' for p in narrow_pins)
    exported = export_pinset(pinset(f"""\
        - host: all.example
          include_subdomains: true
          pins: ["{GTS}"]
        - host: api.all.example
          pins: [{pins}]
        """), "okhttp")
    expected = ["pins.yaml:6: warning: api.all.example: OkHttp unions the pins of every matching "
                "pattern, so it also accepts the pins of **.all.example here, where the pinset "
                "uses only this rule's"]
    assert [str(n) for n in exported.notices] == (expected if warned else [])


def test_export_of_a_below_only_rule_widens_to_double_star_and_says_so() -> None:
    exported = export_pinset(pinset(f"""\
        - host: "*.below.example"
          include_subdomains: true
          pins: ["{X1}"]
        """), "okhttp")
    assert f'.add("**.below.example", "{X1}")' in exported.text
    assert [str(n) for n in exported.notices] == [
        "pins.yaml:3: warning: *.below.example: OkHttp has no pattern for every name strictly "
        "below below.example; exported as '**.below.example', which also pins below.example "
        "itself"]
