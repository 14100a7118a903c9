"""What to pin for a host, from its verified chain; shared by `pin --format yaml` and `init`.

The suggestion is the leaf key and the issuing intermediate(s), never the trust anchor alone:
an anchor pin accepts anything its CA issues. It is a starting point, not a finished rule: it
has no backup pin, so every rule carries a note telling the operator to add one from
`pinproxy backup-key` (HPKP's rule: at least one pin must be outside the live chain).
"""

from __future__ import annotations

from collections.abc import Sequence

from pinproxy.pins import CertificatePins
from pinproxy.tools.render import PinLine, RuleText, printable

__all__ = ["BACKUP_NOTE", "role", "suggested_rule"]

BACKUP_NOTE = ("backup pin still missing: run 'pinproxy backup-key' and add the pin it prints "
               "to this rule before enforcing")


def role(depth: int, length: int) -> str:
    """leaf, intermediate or root: the position of a certificate in a verified chain."""
    if depth == 0:
        return "leaf"
    return "root" if depth == length - 1 else "intermediate"


def suggested_rule(host: str, verified: Sequence[CertificatePins], port: int = 443) -> RuleText:
    """A rule for `host` pinning the leaf and intermediates of a verified chain (leaf first)."""
    chosen = verified[: max(1, len(verified) - 1)]  # everything but the trust anchor
    pins = tuple(PinLine(cert.spki, f"{role(depth, len(verified))}: {printable(cert.subject)}")
                 for depth, cert in enumerate(chosen))
    notes = [] if port == 443 else [f"probed on port {port}; a rule applies to every port "
                                    f"of {host}"]
    return RuleText(host=host, pins=pins, notes=(*notes, BACKUP_NOTE))
