"""Signed remote pinsets: when a fetched pinset may replace the one in force, and the cache.

A fetched pinset is put in force only when, in this order:
1. its minisign signature verifies with the configured public key (trusted comment included);
2. it loads as a pinset (`file:` pins refused: the signature would not cover the files);
3. its `serial` is not lower than the serial in force (no rollback to an older, validly signed
   pinset); an equal serial must come with the very same bytes (two different pinsets under one
   serial means the publisher made a mistake, or someone is replaying: refused and logged);
   a pinset without `serial` cannot replace one that has one;
4. its `valid_until` has not passed (no freeze: an attacker who can block the distribution host
   and replay a validly signed but old pinset forever).

The last accepted pinset and its signature are kept in a cache directory, so a restart without
network enforces it again, after verifying it again. Pure: no network, no mitmproxy; the fetch
itself is `pinproxy.proxy.remote`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import urllib.parse
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pinproxy import minisign
from pinproxy.errors import PinproxyError
from pinproxy.files import read_regular, replace_atomically
from pinproxy.loader import parse_pinset
from pinproxy.pinset import Pinset

__all__ = ["CACHE_NAME", "Outcome", "Refused", "Verified", "cached", "check_url", "is_stale",
           "parse_pubkey", "verify_pinset", "write_cache"]

CACHE_NAME = "pinset.yaml"
SIGNATURE_SUFFIX = ".minisig"


class Outcome(StrEnum):
    """What one fetch came to: the `result` label of `pinproxy_pinset_fetches_total`."""

    ACCEPTED = "accepted"
    UNCHANGED = "unchanged"  # the same bytes as in force: nothing to do
    FETCH_ERROR = "fetch-error"  # unreachable, TLS or pin failure, HTTP error, too big, timeout
    BAD_SIGNATURE = "bad-signature"
    INVALID = "invalid"  # signed, but does not load as a pinset
    ROLLBACK = "rollback"
    SAME_SERIAL = "same-serial"
    STALE = "stale"


class Refused(PinproxyError):
    """A fetched (or cached) pinset that must not be put in force; `outcome` says why."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class Verified:
    """A pinset whose signature verified and that loaded; not yet compared with the one in
    force."""

    pinset: Pinset
    data: bytes
    signature: bytes
    sha256: str
    trusted_comment: str


def check_url(url: str) -> tuple[str, int, str]:
    """(host, port, path-and-query) of an https URL; `PinproxyError` for anything else."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 443
    except ValueError as e:
        raise PinproxyError(f"{url[:200]!r} is not a URL: {e}") from None
    if parts.scheme != "https" or not parts.hostname:
        raise PinproxyError(f"{url[:200]!r} is not an https:// URL (the pinset is fetched over "
                            "HTTPS only)")
    if parts.username or parts.password:
        raise PinproxyError(f"{url[:200]!r}: credentials in the URL are not supported")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, port, path


def parse_pubkey(value: str) -> minisign.PublicKey:
    """`--pinset-pubkey`: a minisign public key (`RW...`), or `@FILE` naming a key file."""
    if value.startswith("@"):
        path = value[1:]
        try:
            text = read_regular(path).decode("utf-8", "replace")
        except OSError as e:
            raise PinproxyError(f"{path}: cannot read public key: {e.strerror or e}") from None
        try:
            return minisign.parse_public_key(text)
        except minisign.MinisignError as e:
            raise PinproxyError(f"{path}: {e}") from None
    return minisign.parse_public_key(value)


def verify_pinset(data: bytes, signature: bytes, key: minisign.PublicKey,
                  source: str) -> Verified:
    """Steps 1 and 2: the signature, then the pinset itself; `Refused` otherwise."""
    try:
        parsed = minisign.parse_signature(signature)
        comment = minisign.verify(key, data, parsed)
    except minisign.MinisignError as e:
        raise Refused(Outcome.BAD_SIGNATURE, f"{source}: {e}") from None
    try:
        pinset = parse_pinset(data, source, allow_files=False)
    except PinproxyError as e:  # a PinsetError: every problem, one a line; keep the first
        first = str(e).splitlines()[0] if str(e) else "does not load"
        raise Refused(Outcome.INVALID, f"signed but not a valid pinset: {first}") from None
    return Verified(pinset, data, signature, hashlib.sha256(data).hexdigest(), comment)


def check_succession(new: Verified, current: Pinset | None, current_sha256: str | None,
                     now: dt.datetime) -> None:
    """Steps 3 and 4 against the pinset in force; `Refused` (UNCHANGED for the same bytes)."""
    if current_sha256 is not None and new.sha256 == current_sha256:
        raise Refused(Outcome.UNCHANGED, "unchanged")
    serial = new.pinset.serial
    if current is not None and current.serial is not None:
        if serial is None:
            raise Refused(Outcome.ROLLBACK, f"has no 'serial'; the pinset in force has serial "
                                            f"{current.serial}: refused as a rollback")
        if serial < current.serial:
            raise Refused(Outcome.ROLLBACK, f"serial {serial} is lower than the serial in force "
                                            f"({current.serial}): refused as a rollback")
        if serial == current.serial:
            raise Refused(Outcome.SAME_SERIAL, f"serial {serial} is the serial in force but the "
                                               "content differs: refused (raise 'serial' at "
                                               "every change)")
    if is_stale(new.pinset, now):
        assert new.pinset.valid_until is not None
        raise Refused(Outcome.STALE, f"stale: its 'valid_until' "
                                     f"({new.pinset.valid_until.isoformat()}) has passed")


def is_stale(pinset: Pinset | None, now: dt.datetime) -> bool:
    return pinset is not None and pinset.valid_until is not None and now > pinset.valid_until


def cached(directory: str, key: minisign.PublicKey) -> Verified | None:
    """The cached pinset, verified again (signature and load); None when there is none.

    A cache that is there but does not verify (a torn write, tampering, another key) raises
    `Refused`: the caller logs it and starts as if there were none.
    """
    path = Path(directory) / CACHE_NAME
    try:
        data = read_regular(path)
        signature = read_regular(f"{path}{SIGNATURE_SUFFIX}")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise Refused(Outcome.INVALID, f"{path}: cannot read the cache: {e.strerror or e}") \
            from None
    return verify_pinset(data, signature, key, str(path))


def write_cache(directory: str, verified: Verified) -> None:
    """Keep an accepted pinset and its signature: each file replaced atomically, the signature
    first. A crash between the two leaves a pair that no longer verifies, which start-up
    refuses (and says so) rather than trusting."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = Path(directory) / CACHE_NAME
    replace_atomically(f"{path}{SIGNATURE_SUFFIX}", verified.signature, 0o644)
    replace_atomically(path, verified.data, 0o644)
