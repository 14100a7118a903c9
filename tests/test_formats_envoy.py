"""Tests of `pinproxy.formats.envoy`: pinset -> Envoy validation_context fragments."""

from __future__ import annotations

import hashlib
import textwrap

import yaml

from pinproxy.formats import export_pinset
from pinproxy.loader import parse_pinset
from pinproxy.pinset import Location
from tests import certs

X1 = "C5+lpZ7tcVwmwQIMcRtPbsQtWLABXhQzejna0wHFr8M="


def test_fragments_per_rule_with_spki_and_whole_certificate_pins() -> None:
    pki = certs.pki("a")
    leaf = pki.chain[0]
    pinset = parse_pinset(textwrap.dedent(f"""\
        version: 1
        hosts:
          - host: {certs.HOST}
            pins: ["{leaf.spki}", "{leaf.certificate}"]
          - host: "*.wild.example"
            pins: ["sha256/{X1}"]
          - host: report.example
            mode: report
            pins: ["sha256/{X1}"]
        """), "pins.yaml")
    exported = export_pinset(pinset, "envoy")
    document = yaml.safe_load(exported.text)
    assert document == {
        certs.HOST: {"validation_context": {
            "verify_certificate_spki": [str(leaf.spki).removeprefix("sha256/")],
            # Envoy's hex spelling of the DER certificate's SHA-256, computed independently
            "verify_certificate_hash": [hashlib.sha256(certs.der_of(pki.leaf_pem)).hexdigest()],
        }},
        "*.wild.example": {"validation_context": {"verify_certificate_spki": [X1]}},
    }
    assert "# pins.yaml:5: for every name one label below wild.example" in exported.text
    assert [(str(n), n.lossy) for n in exported.notices] == [
        ("pins.yaml: note: Envoy checks pins against the leaf certificate only: pins of CA keys "
         "will never match there", False),
        ("pins.yaml:7: warning: report.example is in report mode, which Envoy does not have: not "
         "exported (exporting it would enforce what the pinset only reports)", True),
    ]
    # the file-wide note has no line, and renders as `path: note: ...`
    assert [n.location for n in exported.notices] == [
        Location("pins.yaml"), Location("pins.yaml", 7)]


def test_a_pinset_with_nothing_exportable_is_still_valid_yaml() -> None:
    pinset = parse_pinset(f"version: 1\nmode: report\nhosts:\n  - host: a.example\n"
                          f"    pins: ['sha256/{X1}']\n", "pins.yaml")
    exported = export_pinset(pinset, "envoy")
    assert yaml.safe_load(exported.text) == {}
    assert [n.location for n in exported.notices] == [Location("pins.yaml", 4)]
