"""`pinproxy.remote`: which fetched pinset may replace the one in force, and the cache.

Table tests: each refusal (bad signature, invalid, rollback, same serial, stale) next to the
pinset that passes in its place.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from pinproxy import minisign, remote
from pinproxy.errors import PinproxyError
from pinproxy.remote import Outcome, Refused

KEY = minisign.generate()
OTHER = minisign.generate()
NOW = dt.datetime(2027, 6, 1, 12, tzinfo=dt.UTC)


def text(serial: int | None = None, valid_until: str | None = None, extra: str = "") -> bytes:
    lines = ["version: 1"]
    if serial is not None:
        lines.append(f"serial: {serial}")
    if valid_until is not None:
        lines.append(f"valid_until: {valid_until}")
    return ("\n".join(lines) + f"\nhosts: []\n{extra}").encode()


def signed(data: bytes, key: minisign.SecretKey = KEY) -> remote.Verified:
    signature = minisign.sign(key, data, "c").file_text().encode()
    return remote.verify_pinset(data, signature, KEY.public_key, "https://h/p.yaml")


def test_a_good_signature_gives_the_pinset() -> None:
    verified = signed(text(7, "2027-07-01"))
    assert (verified.pinset.serial, verified.pinset.source) == (7, "https://h/p.yaml")
    assert verified.trusted_comment == "c"


@pytest.mark.parametrize(("data", "signature", "outcome", "message"), [
    (text(1), lambda d: minisign.sign(OTHER, d, "c").file_text(), Outcome.BAD_SIGNATURE,
     "https://h/p.yaml: signature key id"),
    (text(1), lambda d: minisign.sign(KEY, d + b"#", "c").file_text(), Outcome.BAD_SIGNATURE,
     "bad signature: the data does not match"),
    (text(1), lambda d: "not a signature", Outcome.BAD_SIGNATURE, "malformed signature"),
    (b"version: 1\nhosts: [oops\n", lambda d: minisign.sign(KEY, d, "c").file_text(),
     Outcome.INVALID, "signed but not a valid pinset: https://h/p.yaml:"),
    (b"version: 1\nhosts:\n  - host: a.example\n    pins: ['file:/etc/passwd']\n",
     lambda d: minisign.sign(KEY, d, "c").file_text(), Outcome.INVALID,
     "'file:' pins are not allowed in a signed pinset"),
])
def test_what_does_not_verify_is_refused(data: bytes, signature: Callable[[bytes], str],
                                         outcome: Outcome, message: str) -> None:
    with pytest.raises(Refused, match=message) as e:
        remote.verify_pinset(data, signature(data).encode(), KEY.public_key,
                             "https://h/p.yaml")
    assert e.value.outcome is outcome
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("current", "new", "outcome"), [
    (None, text(1), None),  # the first pinset
    (None, text(), None),
    (text(), text(), Outcome.UNCHANGED),
    (text(3), text(3), Outcome.UNCHANGED),
    (text(3), text(4), None),
    (text(3), text(3, extra="# changed\n"), Outcome.SAME_SERIAL),
    (text(3), text(2), Outcome.ROLLBACK),
    (text(3), text(), Outcome.ROLLBACK),  # a serial cannot be dropped
    (text(), text(0), None),  # nor is one needed while none is in force
    (text(3), text(4, "2027-06-01T12:00:00Z"), None),  # the last valid instant
    (text(3), text(4, "2027-06-01T11:59:59Z"), Outcome.STALE),
    (text(3), text(4, "2027-05-31"), Outcome.STALE),
    (text(3), text(4, "2027-06-01"), None),  # a date: valid to its end
    (None, text(4, "2020-01-01"), Outcome.STALE),  # not even as the first pinset
])
def test_succession(current: bytes | None, new: bytes, outcome: Outcome | None) -> None:
    in_force = signed(current) if current is not None else None
    candidate = signed(new)
    args = (candidate, in_force.pinset if in_force else None,
            in_force.sha256 if in_force else None, NOW)
    if outcome is None:
        remote.check_succession(*args)
        return
    with pytest.raises(Refused) as e:
        remote.check_succession(*args)
    assert e.value.outcome is outcome


def test_cache_round_trip_and_its_refusals(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert remote.cached(str(cache), KEY.public_key) is None  # no cache yet
    verified = signed(text(2))
    remote.write_cache(str(cache), verified)
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    again = remote.cached(str(cache), KEY.public_key)
    assert again is not None and again.sha256 == verified.sha256
    assert again.pinset.source == str(cache / remote.CACHE_NAME)
    with pytest.raises(Refused) as e:  # another key's cache is refused
        remote.cached(str(cache), OTHER.public_key)
    assert e.value.outcome is Outcome.BAD_SIGNATURE
    (cache / remote.CACHE_NAME).write_bytes(text(3))  # a torn pair: the signature is the old
    with pytest.raises(Refused, match="bad signature"):
        remote.cached(str(cache), KEY.public_key)
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temp files


@pytest.mark.parametrize(("url", "expected"), [
    ("https://pins.example/p.yaml", ("pins.example", 443, "/p.yaml")),
    ("https://pins.example:8443/a/p.yaml?v=1", ("pins.example", 8443, "/a/p.yaml?v=1")),
    ("https://[::1]:9/p", ("::1", 9, "/p")),
    ("https://pins.example", ("pins.example", 443, "/")),
])
def test_urls(url: str, expected: tuple[str, int, str]) -> None:
    assert remote.check_url(url) == expected


@pytest.mark.parametrize(("url", "message"), [
    ("http://pins.example/p.yaml", "not an https:// URL"),
    ("pins.example/p.yaml", "not an https:// URL"),
    ("https:///p.yaml", "not an https:// URL"),
    ("https://u:p@pins.example/p.yaml", "credentials in the URL are not supported"),
    ("https://pins.example:99999/p", "is not a URL"),
])
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(PinproxyError, match=message):
        remote.check_url(url)


def test_pubkey_from_a_string_or_a_file(tmp_path: Path) -> None:
    public = KEY.public_key
    assert remote.parse_pubkey(public.text) == public
    path = tmp_path / "k.pub"
    path.write_text(public.file_text())
    assert remote.parse_pubkey(f"@{path}") == public
    with pytest.raises(PinproxyError, match="cannot read public key"):
        remote.parse_pubkey(f"@{tmp_path / 'missing.pub'}")
    path.write_text("nonsense")
    with pytest.raises(PinproxyError, match=f"{path}: malformed public key"):
        remote.parse_pubkey(f"@{path}")
