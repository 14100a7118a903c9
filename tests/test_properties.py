"""Property tests (hypothesis) of the loader and of host matching.

The table tests elsewhere pin known cases; these look for the unknown ones: any bytes or text,
and any YAML structure shaped like a pinset, either load or fail with `PinsetError` whose
problems all name the file (and a line, or None for the file as a whole); host normalisation is
idempotent and spelling-blind (U-label or A-label); and `Pinset.candidates` agrees with a
reference model written here from the rules' definitions.

The settings are deterministic (`derandomize`, no example database), so CI sees the same
examples on every run, and bounded so the file runs in a few seconds.
"""

from __future__ import annotations

import string
from datetime import date
from pathlib import Path
from typing import Any

import idna
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinproxy.errors import HostnameError, PinsetError
from pinproxy.hostnames import normalize_host, parse_host_pattern
from pinproxy.loader import parse_pinset
from pinproxy.pins import Pin, PinKind
from pinproxy.pinset import HostRule, Location, Pinset

SOURCE = "fuzz/pins.yaml"
EMPTY_DIR = Path(__file__).parent / "data" / "no-such-dir"  # `file:` pins find nothing here

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=100,
                         suppress_health_check=[HealthCheck.too_slow])
FEW = settings(DETERMINISTIC, max_examples=40)

PINS = ["sha256/C5+lpZ7tcVwmwQIMcRtPbsQtWLABXhQzejna0wHFr8M=",
        "sha256/diGVwiVYbubAI3RW4hB9xU8e/CH2GnkuvVFZE8zmgzI=",
        "sha256//C5+lpZ7tcVwmwQIMcRtPbsQtWLABXhQzejna0wHFr8M=",
        'pin-sha256="LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="',
        "cert-sha256/" + "ab" * 32,
        "sha256/short", "md5/abc", "", "file:missing.pem"]


def assert_loads_or_names_the_file(data: str | bytes) -> None:
    """The property: a Pinset, or PinsetError whose every problem carries the source and a
    line (an int from 1) or None; nothing else escapes."""
    try:
        pinset = parse_pinset(data, source=SOURCE, base_dir=EMPTY_DIR)
    except PinsetError as e:
        assert e.problems
        for problem in e.problems:
            assert problem.location.path == SOURCE
            assert problem.location.line is None or problem.location.line >= 1
            assert problem.message and "\n" not in problem.message
            assert str(problem).startswith(f"{SOURCE}:")
        return
    assert pinset.source == SOURCE
    assert all(rule.location.path == SOURCE and (rule.location.line or 0) >= 1
               for rule in pinset.rules)


# -- anything in, the project's own error out ----------------------------------------------

@DETERMINISTIC
@given(st.binary(max_size=512))
def test_arbitrary_bytes_load_or_fail_with_located_problems(data: bytes) -> None:
    assert_loads_or_names_the_file(data)


@DETERMINISTIC
@given(st.text(alphabet=st.sampled_from(string.printable + "\x00\ufeff\u00e9\u2028"),
               max_size=300))
def test_arbitrary_yamlish_text_loads_or_fails_with_located_problems(text: str) -> None:
    assert_loads_or_names_the_file(text)


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.text(max_size=8),
                    st.dates(min_value=date(1, 1, 1)), st.floats(allow_nan=True))
HOSTS = st.one_of(
    st.sampled_from(["api.example.com", "*.example.com", "b\u00fccher.example", "10.0.0.1",
                     "::1", "*.10.0.0.1", "a.*.b", "", "-x.example", "xn--pypal-4ve.com",
                     "co.uk", "Example.COM."]),
    st.text(max_size=20), SCALARS)
RULES = st.fixed_dictionaries(
    {"host": HOSTS},
    optional={"pins": st.one_of(st.lists(st.one_of(st.sampled_from(PINS), SCALARS), max_size=4),
                                SCALARS),
              "include_subdomains": st.one_of(st.booleans(), SCALARS),
              "expires": st.one_of(st.dates(), SCALARS),
              "mode": st.one_of(st.sampled_from(["enforce", "report"]), SCALARS),
              "include_subdomain": st.booleans()})  # a misspelt key
PINSETS = st.fixed_dictionaries(
    {"version": st.one_of(st.just(1), SCALARS)},
    optional={"mode": st.one_of(st.sampled_from(["enforce", "report"]), SCALARS),
              "unpinned": st.one_of(st.sampled_from(["allow", "block"]), SCALARS),
              "hosts": st.one_of(st.lists(st.one_of(RULES, SCALARS), max_size=5), SCALARS),
              "extra": SCALARS})


@FEW
@given(PINSETS)
def test_pinset_shaped_documents_load_or_fail_with_located_problems(document: Any) -> None:
    assert_loads_or_names_the_file(yaml.safe_dump(document, allow_unicode=True))


# -- host names ----------------------------------------------------------------------------

LABEL_CHARS = st.sampled_from("abcxyz019-_" + "ABC" + "\u00fc\u00df\u03b1\u0430\u043f\u65e5"
                              + "\uff45\u3002")
NAMES = st.lists(st.text(LABEL_CHARS, min_size=1, max_size=10), min_size=1, max_size=4).map(
    ".".join)


@DETERMINISTIC
@given(NAMES)
def test_normalisation_is_idempotent_and_spelling_blind(name: str) -> None:
    try:
        canonical = normalize_host(name)
    except HostnameError:
        return
    assert normalize_host(canonical) == canonical
    assert normalize_host(canonical.upper() + ".") == canonical
    assert canonical.isascii() and canonical == canonical.lower()
    # the U-label spelling maps to the same rule host
    unicode = ".".join(idna.decode(label) if label.startswith("xn--") else label
                       for label in canonical.split("."))
    assert normalize_host(unicode) == canonical
    assert parse_host_pattern(unicode) == parse_host_pattern(canonical) == canonical
    assert parse_host_pattern(f"*.{unicode}") == f"*.{canonical}"


# -- matching against a reference model ----------------------------------------------------

LABELS = st.sampled_from(["a", "b", "c"])
DNS_NAMES = st.lists(LABELS, min_size=1, max_size=4).map(".".join)
PATTERNS = st.tuples(DNS_NAMES, st.booleans(), st.booleans()).map(
    lambda t: (f"*.{t[0]}" if t[1] else t[0], t[2]))
PIN = Pin(PinKind.SPKI, bytes(32))


def model_rank(rule: HostRule, name: str) -> int | None:
    """None when `rule` does not cover `name`, by the definitions in docs and pinset.py;
    else its precedence (lower wins): exact, then `*.` one label, then include_subdomains,
    nearest base first, a `*.` base before an exact one on the same base."""
    if not rule.is_wildcard and name == rule.host:
        return 0
    if not name.endswith("." + rule.base):
        return None
    depth = name.count(".") - rule.base.count(".")
    if rule.is_wildcard and not rule.include_subdomains:
        return 1 if depth == 1 else None
    if not rule.include_subdomains:
        return None
    return 2 + 2 * depth + (0 if rule.is_wildcard else 1)


@settings(DETERMINISTIC, max_examples=200)
@given(st.lists(PATTERNS, max_size=8, unique_by=lambda p: p[0]), st.lists(DNS_NAMES, max_size=6))
def test_a_rule_never_matches_a_name_outside_its_pattern(patterns: list[tuple[str, bool]],
                                                         names: list[str]) -> None:
    rules = tuple(HostRule(host, (PIN,), Location("p.yaml", i + 1), include_subdomains=include)
                  for i, (host, include) in enumerate(patterns))
    pinset = Pinset(rules=rules, source="p.yaml")
    for name in names + [rule.base for rule in rules] + [f"a.{rule.base}" for rule in rules]:
        found = list(pinset.candidates(name))
        ranks = {rule.host: rank for rule in rules
                 if (rank := model_rank(rule, name)) is not None}
        assert {rule.host for rule in found} == set(ranks), name
        assert [ranks[rule.host] for rule in found] == sorted(ranks.values()), name
        assert pinset.covers(name) is bool(ranks)


@FEW
@given(st.lists(st.integers(0, 255), min_size=4, max_size=4).map(
    lambda octets: ".".join(map(str, octets))))
def test_an_ip_address_matches_only_its_exact_rule(address: str) -> None:
    """DNS-looking rules on an address's numeric "suffixes" never match it."""
    last, rest = address.split(".", 1)[1], address.rsplit(".", 1)[1]
    rules = (HostRule(address, (PIN,), Location("p.yaml", 1)),
             HostRule(f"*.{last}", (PIN,), Location("p.yaml", 2)),
             HostRule(rest, (PIN,), Location("p.yaml", 3), include_subdomains=True))
    pinset = Pinset(rules=rules, source="p.yaml")
    assert [rule.host for rule in pinset.candidates(address)] == [address]
    assert list(Pinset(rules=rules[1:], source="p.yaml").candidates(address)) == []
