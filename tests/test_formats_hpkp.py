"""Tests of `pinproxy.formats.hpkp`: Public-Key-Pins header lines <-> pinset.

max-age counts from a fixed `now` here, so the expiry arithmetic is asserted exactly.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from pinproxy.errors import FormatError
from pinproxy.formats import export_pinset, import_pins
from pinproxy.formats.hpkp import DEFAULT_MAX_AGE
from pinproxy.loader import parse_pinset
from pinproxy.pinset import Location, Mode, Pinset

HEADERS = Path(__file__).parent / "data" / "formats" / "hpkp-headers.txt"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RFC = {"sha256/d6qzRu9zOECb90Uez27xWltNsj0e1Md7GkYYkVoZWmM=",
       "sha256/E9CZ9INDbd+2eRQozYqqbQ2yXLVKB9+xcprMF+44U1g=",
       "sha256/LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="}
X1 = "C5+lpZ7tcVwmwQIMcRtPbsQtWLABXhQzejna0wHFr8M="
X2 = "diGVwiVYbubAI3RW4hB9xU8e/CH2GnkuvVFZE8zmgzI="


def rules(text: str) -> set[tuple[str, frozenset[str], bool, date | None, Mode]]:
    return {(r.host, frozenset(str(p) for p in r.pins), r.include_subdomains, r.expires, r.mode)
            for r in parse_pinset(text).rules}


def test_rfc_example_header_imports_with_expiry_counted_from_today() -> None:
    result = import_pins(HEADERS.read_bytes(), "headers.txt", host="www.example.com", now=NOW)
    assert rules(result.text) == {("www.example.com", frozenset(RFC), True, date(2026, 3, 1),
                                   Mode.ENFORCE)}
    assert [(str(n), n.lossy) for n in result.notices] == [(
        "headers.txt:2: note: expires 2026-03-01 is max-age=10000 counted from today "
        "(2026-03-01); browsers restart max-age at every response, a pinset's expires is a "
        "fixed date", False)]
    assert "# expires 2026-03-01 is max-age=10000 counted from today" in result.text


def test_report_only_header_imports_as_report_mode_and_report_uri_is_reported() -> None:
    text = (f'Public-Key-Pins-Report-Only: max-age=5184000; pin-sha256="{X1}"; '
            f'pin-sha256="{X2}"; report-uri="https://r.example/hpkp"; future-directive=1\n')
    result = import_pins(text.encode(), "h.txt", host="api.example", now=NOW)
    assert rules(result.text) == {("api.example", frozenset({f"sha256/{X1}", f"sha256/{X2}"}),
                                   False, date(2026, 4, 30), Mode.REPORT)}
    assert [(n.message.split(" ")[0], n.lossy) for n in result.notices] == [
        ("report-uri", True), ("unknown", False), ("expires", False)]


def test_max_age_ending_at_midnight_keeps_that_days_date() -> None:
    midnight = datetime(2026, 3, 1, tzinfo=UTC)
    text = f'Public-Key-Pins: pin-sha256="{X1}"; pin-sha256="{X2}"; max-age=86400'
    result = import_pins(text.encode(), "h.txt", host="api.example", now=midnight)
    assert parse_pinset(result.text).rules[0].expires == date(2026, 3, 1)


def test_import_needs_the_host_and_its_twin_with_host_works() -> None:
    data = HEADERS.read_bytes()
    with pytest.raises(FormatError, match=r"^headers\.txt: HPKP headers do not name their host"):
        import_pins(data, "headers.txt", "hpkp", now=NOW)
    assert import_pins(data, "headers.txt", "hpkp", host="example.com", now=NOW).text


@pytest.mark.parametrize(("header", "message"), [
    (f'Public-Key-Pins: pin-sha256="{X1}"',
     "h.txt:1: the header has no max-age (RFC 7469 requires one)"),
    (f'Public-Key-Pins: pin-sha256="{X1}"; max-age=10; max-age=20',
     "h.txt:1: directive 'max-age' appears twice (RFC 7469: browsers ignore such a header)"),
    (f'Public-Key-Pins: pin-sha256="{X1[:-4]}"; max-age=10',
     f"h.txt:1: pin 'sha256/{X1[:-4]}' is not base64 of a 32-byte SHA-256 digest"),
    (f'Public-Key-Pins: pin-sha256="{X1}"; max-age=ten',
     "h.txt:1: max-age='ten' is not a number of seconds"),
    (f'Public-Key-Pins: pin-sha256="{X1}"; max-age=10; =x',
     "h.txt:1: cannot read the header at '=x'"),
])
def test_rejected_header_names_its_line(header: str, message: str) -> None:
    with pytest.raises(FormatError) as raised:
        import_pins(header.encode(), "h.txt", "hpkp", host="api.example", now=NOW)
    assert str(raised.value) == message


def pinset(body: str) -> Pinset:
    return parse_pinset("version: 1\nhosts:\n" + textwrap.dedent(body), "pins.yaml")


def test_export_counts_max_age_to_the_end_of_the_expires_day_and_round_trips() -> None:
    source = pinset(f"""\
        - host: api.example
          include_subdomains: true
          expires: 2026-03-31
          pins: ["sha256/{X1}", "sha256/{X2}"]
        """)
    exported = export_pinset(source, "hpkp", now=NOW)
    headers = [line for line in exported.text.splitlines() if not line.startswith("#")]
    seconds = (datetime(2026, 4, 1, tzinfo=UTC) - NOW).total_seconds()
    assert headers == [f'Public-Key-Pins: pin-sha256="{X1}"; pin-sha256="{X2}"; '
                       f"max-age={int(seconds)}; includeSubDomains"]
    assert exported.notices == ()
    again = import_pins(exported.text.encode(), "h.txt", host="api.example", now=NOW)
    assert rules(again.text) == {("api.example", frozenset({f"sha256/{X1}", f"sha256/{X2}"}),
                                  True, date(2026, 3, 31), Mode.ENFORCE)}


def test_export_defaults_report_only_and_what_hpkp_cannot_carry() -> None:
    exported = export_pinset(pinset(f"""\
        - host: report.example
          mode: report
          pins: ["sha256/{X1}", "sha256/{X2}"]
        - host: single.example
          pins: ["sha256/{X1}"]
        - host: gone.example
          expires: 2026-02-28
          pins: ["sha256/{X1}", "sha256/{X2}"]
        - host: "*.wild.example"
          pins: ["sha256/{X1}", "cert-sha256/{X2}"]
        """), "hpkp", now=NOW)
    headers = [line for line in exported.text.splitlines() if not line.startswith("#")]
    assert headers == [
        f'Public-Key-Pins-Report-Only: pin-sha256="{X1}"; pin-sha256="{X2}"; '
        f"max-age={DEFAULT_MAX_AGE}",
        f'Public-Key-Pins: pin-sha256="{X1}"; max-age={DEFAULT_MAX_AGE}',
        f'Public-Key-Pins: pin-sha256="{X1}"; max-age={DEFAULT_MAX_AGE}',
    ]
    assert "# send from every name one label below wild.example (pins.yaml:11)" in exported.text
    assert [(n.location, n.message.split(":")[0]) for n in exported.notices] == [
        (Location("pins.yaml", 6), "single.example has one pin"),
        (Location("pins.yaml", 8), "gone.example expired after 2026-02-28"),
        (Location("pins.yaml", 11), "*.wild.example"),  # the whole-certificate pin is left out
        (Location("pins.yaml", 11), "*.wild.example has one pin"),
    ]


def test_export_carries_each_rule_report_uri() -> None:
    source = parse_pinset(textwrap.dedent(f"""\
        version: 1
        report_uri: https://c.example/r
        hosts:
          - host: a.example
            pins: ["sha256/{X1}", "sha256/{X2}"]
          - host: b.example
            report_uri: https://b-team.example/pins
            pins: ["sha256/{X1}", "sha256/{X2}"]
        """), "pins.yaml")
    headers = [line for line in export_pinset(source, "hpkp", now=NOW).text.splitlines()
               if not line.startswith("#")]
    assert [h.rpartition("; ")[2] for h in headers] == [
        'report-uri="https://c.example/r"', 'report-uri="https://b-team.example/pins"']
    # the twin: a pinset without report_uri exports no report-uri directive
    plain = export_pinset(pinset(f"""\
        - host: a.example
          pins: ["sha256/{X1}", "sha256/{X2}"]
        """), "hpkp", now=NOW).text
    assert "report-uri" not in plain
