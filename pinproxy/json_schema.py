"""The JSON Schema (draft 2020-12) of pinset version 1, as data: what `pinproxy schema` prints.

It lets an editor (yaml-language-server, VS Code) complete keys and flag mistakes while the
pinset is being written. It describes the shape of the file as an editor reading YAML 1.2 sees
it; `pinproxy check` remains the authority and also checks what a schema cannot express:
duplicate keys, YAML aliases, two rules for one host, that a date exists, IDNA validity, and the
files that `file:` pins name. The patterns use only the regular-expression syntax that both
ECMA-262 (editors) and Python's `re` read the same way.
"""

from __future__ import annotations

from typing import Any, Final

from pinproxy.pinset import Mode, OnExpiry, Unpinned

__all__ = ["PINSET_SCHEMA", "SCHEMA_DIALECT"]

SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"


def _ci(word: str) -> str:
    """A case-insensitive pattern for `word` (ECMA-262 has no inline `(?i)`)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


# -- pins ----------------------------------------------------------------------------------

# Canonical base64 of a 32-byte digest: 43 characters and '='; the 43rd carries 2 unused bits,
# which must be zero (the loader re-encodes the digest and compares).
_B64_DIGEST = "[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]="
_HEX_DIGEST = "[0-9A-Fa-f]{2}(?::?[0-9A-Fa-f]{2}){31}"

_PIN_FORMS: Final = [
    (f"^{_ci('sha256')}//?{_B64_DIGEST}$",
     "SPKI pin: base64 SHA-256 of the DER SubjectPublicKeyInfo, as OkHttp, Android and Envoy "
     "write it ('sha256/<base64>'), or curl's --pinnedpubkey spelling ('sha256//<base64>'). "
     "It survives certificate renewal with the same key."),
    (f'^{_ci("pin-sha256")}[ \\t]*=[ \\t]*(?:"{_B64_DIGEST}"|{_B64_DIGEST})$',
     "SPKI pin in the HPKP (RFC 7469) spelling: pin-sha256=\"<base64>\"."),
    (f"^{_ci('cert-sha256')}/(?:{_B64_DIGEST}|{_HEX_DIGEST})$",
     "Whole-certificate pin: SHA-256 of the DER certificate, base64 or hex (colons allowed, as "
     "'openssl x509 -fingerprint -sha256' prints it). It changes at every renewal: prefer SPKI "
     "pins."),
    ("^file:[ \\t]*[^ \\t].*$",
     "file:<path>: pin the public key of every certificate and key in a PEM or DER file, the "
     "path relative to the pinset's directory."),
]

# -- hosts ---------------------------------------------------------------------------------

# Letters, digits, '_' and '-' (not first or last); non-ASCII letters are IDNA-encoded by the
# loader. The last label must not be all digits (resolvers would read the name as IPv4).
_LABEL_CHAR = "[A-Za-z0-9_\u00a0-\uffff]"
_LABEL = f"{_LABEL_CHAR}(?:[A-Za-z0-9_\u00a0-\uffff-]{{0,61}}{_LABEL_CHAR})?"
_LAST_LABEL = f"(?=[^.]*[A-Za-z_\u00a0-\uffff]){_LABEL}"
_DNS_NAME = f"(?=.{{1,253}}\\.?$)(?:{_LABEL}\\.)*{_LAST_LABEL}\\.?"

_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = f"{_OCTET}(?:\\.{_OCTET}){{3}}"


def _ipv6() -> str:
    """RFC 3986's IPv6address grammar: full form, then one alternative per place of '::'."""
    h16 = "[0-9A-Fa-f]{1,4}"
    ls32 = f"(?:{h16}:{h16}|{_IPV4})"
    tails = [f"(?:{h16}:){{5}}{ls32}", f"(?:{h16}:){{4}}{ls32}", f"(?:{h16}:){{3}}{ls32}",
             f"(?:{h16}:){{2}}{ls32}", f"{h16}:{ls32}", ls32, h16, ""]
    forms = [f"(?:{h16}:){{6}}{ls32}"]
    for before, tail in enumerate(tails):  # at most `before` groups before "::"
        head = f"(?:(?:{h16}:){{0,{before - 1}}}{h16})?" if before else ""
        forms.append(f"{head}::{tail}")
    return "(?:" + "|".join(forms) + ")"


_IPV6 = _ipv6()
_IP = f"(?:{_IPV4}|\\[{_IPV6}\\]|{_IPV6})"
_HOST_PATTERN = f"^(?:(?:\\*\\.)?{_DNS_NAME}|{_IP})$"
_IP_PATTERN = f"^{_IP}$"

# https:// to any host; http:// only to a loopback collector (127.0.0.0/8, [::1], localhost);
# no credentials (user@), no #fragment.
_URL_TAIL = "(?::[0-9]{1,5})?(?:[/?][^\\s#]*)?$"
_REPORT_URI_PATTERN = (
    f"^(?:{_ci('https')}://[^\\s/?#@]+"
    f"|{_ci('http')}://(?:(?:[^\\s/?#@:]+\\.)?{_ci('localhost')}|127(?:\\.[0-9]{{1,3}}){{3}}"
    f"|\\[::1\\])){_URL_TAIL}")
_DURATION_PATTERN = "^[0-9]{1,9}[smhd]?$"

_DATE_PATTERN = "^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])$"
_VALID_UNTIL_PATTERN = ("^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
                        "(?:[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,6})?"
                        "(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9]))?$")


def _report_uri(what: str) -> dict[str, Any]:
    return {
        "description": f"Where violation reports {what} are POSTed: an RFC 7469 JSON report per "
                       "violation, sent in the background (never delaying traffic), retried, "
                       "and de-duplicated within report_dedupe. https://, or http:// to a "
                       "loopback collector only.",
        "type": "string",
        "format": "uri",
        "pattern": _REPORT_URI_PATTERN,
        "examples": ["https://pins-collector.example.com/report"],
    }


def _mode(what: str) -> dict[str, Any]:
    return {
        "description": f"What a failed check does {what}. enforce: refuse the connection. "
                       "report: let it through, log it and write it to the report log.",
        "enum": [mode.value for mode in Mode],
    }


def _on_expiry(what: str) -> dict[str, Any]:
    return {
        "description": f"What a rule past its 'expires' date does {what}. allow: it is skipped "
                       "(its names fall to the next rule, or to 'unpinned'). report: every "
                       "connection it covers goes through and is logged and reported as "
                       "rule-expired. block: every such connection is refused as rule-expired "
                       "(reported only, under mode: report).",
        "enum": [choice.value for choice in OnExpiry],
    }


PINSET_SCHEMA: Final[dict[str, Any]] = {
    "$schema": SCHEMA_DIALECT,
    "title": "pinproxy pinset, version 1",
    "description": "The hosts pinproxy pins and the public keys (or certificates) each must "
                   "present somewhere in its verified chain: leaf, intermediate or root. Check "
                   "a file with: pinproxy check PINSET.",
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "hosts"],
    "properties": {
        "version": {
            "description": "Pinset format version; this pinproxy reads version 1.",
            "type": "integer",
            "const": 1,
        },
        "mode": {**_mode("for every rule that does not set its own 'mode'"),
                 "default": Mode.ENFORCE.value},
        "unpinned": {
            "description": "What happens to a host that no rule covers. allow: it passes with "
                           "normal CA checks only. block: only hosts with a rule are reachable "
                           "through the proxy. learn: trust on first use for every DNS name "
                           "(the pins of its first verified chain are learned and enforced; "
                           "needs --learn-file).",
            "enum": [choice.value for choice in Unpinned],
            "default": Unpinned.ALLOW.value,
        },
        "on_expiry": {**_on_expiry("for every rule that does not set its own 'on_expiry'"),
                      "default": OnExpiry.REPORT.value},
        "serial": {
            "description": "The pinset's version number, for a signed pinset fetched with "
                           "--pinset-url: the proxy refuses a fetched pinset whose serial is "
                           "lower than the one in force (a rollback). Raise it at every change.",
            "type": "integer",
            "minimum": 0,
            "maximum": 2**63 - 1,
        },
        "valid_until": {
            "description": "When this pinset goes stale: an ISO 8601 timestamp with a time zone "
                           "(2027-01-31T12:00:00Z), or a date (valid to its end, UTC). A "
                           "fetched pinset past it is refused (a replayed old pinset), and "
                           "--on-stale says what a proxy does once the one in force is past it.",
            "type": "string",
            "pattern": _VALID_UNTIL_PATTERN,
        },
        "report_uri": _report_uri("of every rule without its own 'report_uri'"),
        "report_dedupe": {
            "description": "How long the same violation (host, rule, served and verified "
                           "chain) is not POSTed to report_uri again: seconds, or a number "
                           "with s, m, h or d (at most 366d). The report log records every "
                           "one.",
            "anyOf": [{"type": "integer", "minimum": 0, "maximum": 366 * 86400},
                      {"type": "string", "pattern": _DURATION_PATTERN}],
            "default": "24h",
            "examples": ["24h", "30m", 3600],
        },
        "hosts": {
            "description": "The host rules. A host is decided by one rule: an exact host beats "
                           "'*.' (exactly one label), which beats include_subdomains (the "
                           "nearest base wins). At most one rule per host.",
            "type": "array",
            "items": {"$ref": "#/$defs/hostRule"},
        },
    },
    "$defs": {
        "hostRule": {
            "description": "One host pattern and the pins it must satisfy: a connection "
                           "passes when any pin matches any certificate of the verified chain.",
            "type": "object",
            "additionalProperties": False,
            "required": ["host"],
            "properties": {
                "host": {"$ref": "#/$defs/host"},
                "pins": {
                    "description": "Pins of this host; any one matching is enough. List at "
                                   "least two: the key or CA in use and a backup (a second CA, "
                                   "or the key of your next certificate: pinproxy backup-key).",
                    "type": "array",
                    "minItems": 1,
                    "items": {"$ref": "#/$defs/pin"},
                },
                "include_subdomains": {
                    "description": "Also pin every name below this host, at any depth (the "
                                   "host itself included). Not allowed for IP addresses.",
                    "type": "boolean",
                    "default": False,
                },
                "expires": {
                    "description": "The last day (UTC), YYYY-MM-DD, on which this rule is "
                                   "enforced; after it the pins are no longer checked, and "
                                   "'on_expiry' says what happens.",
                    "type": "string",
                    "format": "date",
                    "pattern": _DATE_PATTERN,
                },
                "mode": {
                    "description": "What a failed check does for this rule (default: the "
                                   "pinset's 'mode'). enforce: refuse the connection. report: "
                                   "let it through, log it and write it to the report log. "
                                   "learn: trust on first use: no 'pins'; each host the rule "
                                   "covers is enforced against the pins of its first verified "
                                   "chain (needs --learn-file).",
                    "enum": [*(mode.value for mode in Mode), "learn"],
                },
                "report_uri": _report_uri("of this rule (default: the pinset's "
                                          "'report_uri')"),
                "on_expiry": _on_expiry("(default: the pinset's 'on_expiry')"),
            },
            "allOf": [
                {"if": {"required": ["host"], "properties": {"host": {"pattern": _IP_PATTERN}}},
                 "then": {"properties": {"include_subdomains": {
                     "const": False,
                     "description": "An IP address has no subdomains.",
                 }}}},
                {"if": {"required": ["mode"], "properties": {"mode": {"const": "learn"}}},
                 "then": {"not": {"required": ["pins"]}},
                 "else": {"required": ["pins"]}},
            ],
        },
        "host": {
            "description": "A DNS name (any case, Unicode or punycode, trailing dot ignored), "
                           "'*.' and a name for exactly one label below it (never the name "
                           "itself), or an IP address (IPv6 with or without brackets).",
            "type": "string",
            "pattern": _HOST_PATTERN,
            "examples": ["api.example.com", "*.example.com", "192.0.2.10", "[2001:db8::1]"],
        },
        "pin": {
            "description": "One pin: 'sha256/<base64>' (SPKI, preferred), its curl or HPKP "
                           "spelling, 'cert-sha256/<base64 or hex>' (whole certificate), or "
                           "'file:<path>'. Compute pins with: pinproxy pin HOST or pinproxy pin "
                           "FILE.",
            "type": "string",
            "anyOf": [{"pattern": pattern, "description": description}
                      for pattern, description in _PIN_FORMS],
            "examples": ["sha256/C5+lpZ7tcVwmwQIMcRtPbsQtWLABXhQzejna0wHFr8M="],
        },
    },
}
