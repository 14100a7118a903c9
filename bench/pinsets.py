"""Synthetic pinsets of a given size, one of whose rules pins the benchmark host.

Sizes matter for load time and memory, not for lookup (the pinset is a dict), which is what the
benchmark shows. The filler looks like real pinsets: two pins per host (current + backup),
one rule in ten a `*.` wildcard, one in ten `include_subdomains`. Seeded: the same size gives
the same file on every run.
"""

from __future__ import annotations

import random
from pathlib import Path

from pinproxy.pins import Pin, PinKind
from pinproxy.tools.render import PinLine, RuleText, render_pinset

__all__ = ["pinset_rules", "write_pinset"]

_NAME_SPACE = 1_000_000  # h000000 … h999999


def pinset_rules(size: int, host: str, pin: Pin, seed: int = 4) -> list[RuleText]:
    """`size` rules: `size - 1` filler hosts, then `host` pinned to `pin` plus a backup pin."""
    if not 1 <= size <= _NAME_SPACE:
        raise ValueError(f"pinset size {size} is not between 1 and {_NAME_SPACE}")
    rng = random.Random(seed)  # noqa: S311 - reproducible filler, not secrets
    rules = []
    for index, number in enumerate(rng.sample(range(_NAME_SPACE), size - 1)):
        pins = (PinLine(_random_pin(rng)), PinLine(_random_pin(rng)))
        name = f"h{number:06d}.example.com"
        if index % 10 == 3:
            rules.append(RuleText(f"*.{name}", pins))
        else:
            rules.append(RuleText(name, pins, include_subdomains=index % 10 == 7))
    rules.append(RuleText(host, (PinLine(pin, "bench root"), PinLine(_random_pin(rng), "backup"))))
    return rules


def write_pinset(path: Path, size: int, host: str, pin: Pin) -> Path:
    path.write_text(render_pinset(pinset_rules(size, host, pin),
                                  header=[f"benchmark pinset: {size} host rules"]))
    return path


def _random_pin(rng: random.Random) -> Pin:
    return Pin(PinKind.SPKI, rng.randbytes(32))
