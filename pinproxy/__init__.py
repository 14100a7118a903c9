"""pinproxy: a forward proxy that enforces certificate and public-key pins.

The library is the pure core (pins, pinsets, the decision); `pinproxy.proxy.addon` adapts it to
mitmproxy and `pinproxy.cli` runs it.
"""

from pinproxy.errors import HostnameError, PinError, PinproxyError, PinsetError
from pinproxy.loader import load_pinset, parse_pinset
from pinproxy.pins import CertificatePins, Pin, PinKind, certificate_pins, parse_pin
from pinproxy.pinset import HostRule, Location, Mode, Pinset, Unpinned
from pinproxy.policy import (
    Action,
    Decision,
    Reason,
    decide,
    decide_plaintext,
    decide_request,
    decide_tunnel,
)

__all__ = [
    "Action",
    "CertificatePins",
    "Decision",
    "HostRule",
    "HostnameError",
    "Location",
    "Mode",
    "Pin",
    "PinError",
    "PinKind",
    "PinproxyError",
    "Pinset",
    "PinsetError",
    "Reason",
    "Unpinned",
    "certificate_pins",
    "decide",
    "decide_plaintext",
    "decide_request",
    "decide_tunnel",
    "load_pinset",
    "parse_pin",
    "parse_pinset",
]
