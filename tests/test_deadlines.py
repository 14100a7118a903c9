"""The deadlines' settings (parse functions, via the variables that use them), the open file
limit raised for --max-connections, and the rate-limited warning of the connection bound."""

from __future__ import annotations

import asyncio
import logging
import resource

import pytest
from mitmproxy import connection

from pinproxy.commands import run
from pinproxy.errors import PinproxyError
from pinproxy.proxy.addon import Pinning
from pinproxy.proxy.deadlines import Deadlines, raise_file_limit


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("PINPROXY_UPSTREAM_TIMEOUT", "2.5", 2.5),
    ("PINPROXY_UPSTREAM_TIMEOUT", "86400", 86400.0),
    ("PINPROXY_REQUEST_HEAD_TIMEOUT", "0.5", 0.5),
    ("PINPROXY_IDLE_TIMEOUT", "1", 1),
    ("PINPROXY_IDLE_TIMEOUT", "86400", 86400),
    ("PINPROXY_MAX_CONNECTIONS", "1", 1),
    ("PINPROXY_MAX_CONNECTIONS", "1000000", 1_000_000),
])
def test_a_good_value_is_read(name: str, text: str, expected: object) -> None:
    values = run.from_environment({name: text})
    assert list(values.values()) == [expected]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("PINPROXY_UPSTREAM_TIMEOUT", "0", "is not a number of seconds (> 0, at most 86400)"),
    ("PINPROXY_UPSTREAM_TIMEOUT", "-1", "is not a number of seconds"),
    ("PINPROXY_UPSTREAM_TIMEOUT", "nan", "is not a number of seconds"),
    ("PINPROXY_UPSTREAM_TIMEOUT", "inf", "is not a number of seconds"),
    ("PINPROXY_REQUEST_HEAD_TIMEOUT", "86401", "is not a number of seconds"),
    ("PINPROXY_REQUEST_HEAD_TIMEOUT", "5s", "is not a number of seconds"),
    ("PINPROXY_IDLE_TIMEOUT", "0", "is not a whole number of seconds (1 to 86400)"),
    ("PINPROXY_IDLE_TIMEOUT", "1.5", "is not a whole number of seconds"),
    ("PINPROXY_IDLE_TIMEOUT", "86401", "is not a whole number of seconds"),
    ("PINPROXY_IDLE_TIMEOUT", "²", "is not a whole number of seconds"),
    ("PINPROXY_MAX_CONNECTIONS", "0", "is not a number of connections (1-1000000)"),
    ("PINPROXY_MAX_CONNECTIONS", "1000001", "is not a number of connections"),
    ("PINPROXY_MAX_CONNECTIONS", "-5", "is not a number of connections"),
])
def test_a_bad_value_is_named_with_its_value(name: str, text: str, message: str) -> None:
    with pytest.raises(PinproxyError) as raised:
        run.from_environment({name: text})
    assert str(raised.value).startswith(f"{name}={text!r} {message}")


class _Limits:
    def __init__(self, soft: int, hard: int, settable: bool = True) -> None:
        self.soft, self.hard, self.settable = soft, hard, settable

    def get(self, _: int) -> tuple[int, int]:
        return self.soft, self.hard

    def set(self, _: int, limits: tuple[int, int]) -> None:
        if not self.settable:
            raise ValueError("not allowed")
        self.soft = limits[0]


@pytest.mark.parametrize(("soft", "hard", "settable", "after", "warns"), [
    (1024, 1_048_576, True, 2 * 10_000 + 64, False),  # raised toward the hard limit
    (100_000, 1_048_576, True, 100_000, False),  # already enough: untouched
    (1024, 4096, True, 4096, True),  # raised to the hard limit, still too low
    (1024, 1_048_576, False, 1024, True),  # cannot be raised
    (1024, resource.RLIM_INFINITY, True, 2 * 10_000 + 64, False),
])
def test_the_open_file_limit_is_raised_for_max_connections(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, soft: int,
        hard: int, settable: bool, after: int, warns: bool) -> None:
    limits = _Limits(soft, hard, settable)
    monkeypatch.setattr(resource, "getrlimit", limits.get)
    monkeypatch.setattr(resource, "setrlimit", limits.set)
    with caplog.at_level(logging.WARNING):
        raise_file_limit(10_000)
    assert limits.soft == after
    assert any("--max-connections 10000" in r.getMessage() for r in caplog.records) is warns


def _client() -> connection.Client:
    return connection.Client(peername=("127.0.0.1", 50000), sockname=("127.0.0.1", 8080),
                             timestamp_start=0.0)


def test_beyond_the_bound_a_client_is_refused_with_one_warning_per_second(
        caplog: pytest.LogCaptureFixture) -> None:
    bound = Deadlines(Pinning(), upstream_timeout=10, request_head_timeout=30,
                      max_connections=2)

    async def connect_many() -> list[connection.Client]:
        clients = [_client() for _ in range(5)]
        for client in clients:
            bound.client_connected(client)
        bound.client_disconnected(clients[0])
        clients.append(_client())
        bound.client_connected(clients[-1])  # a place was free again
        for client in clients:
            bound.client_disconnected(client)  # and every timer is cancelled
        return clients

    with caplog.at_level(logging.WARNING):
        clients = asyncio.run(connect_many())
    assert [c.error is not None for c in clients] == [False, False, True, True, True, False]
    assert len([r for r in caplog.records if "--max-connections" in r.getMessage()]) == 1
