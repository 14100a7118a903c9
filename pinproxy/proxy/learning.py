"""Trust on first use in the running proxy: the learned hosts in memory, and their file.

Learning is a state change the verify callback records after `pinproxy.policy` answered
`FIRST_USE` for a chain OpenSSL verified. It happens on the event loop's thread, where every
handshake is decided, so two first connections to one host cannot both be first: the second is
checked against what the first learned. Writing the file (a locked merge, `learned.merge`)
runs in a thread, one write at a time; what is learned meanwhile is enforced from memory and
goes into the next write. A failed write is logged and kept for the next one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from pinproxy import metrics
from pinproxy.errors import PinproxyError, quote
from pinproxy.learned import (
    MAX_LEARNED_HOSTS,
    Learned,
    LearnedHost,
    Signature,
    merge_signed,
    read_learned_signed,
    signature,
)
from pinproxy.policy import Decision

__all__ = ["LearnState"]

logger = logging.getLogger(__name__)


class LearnState:
    """The learned hosts of this process; the file is read at construction (a corrupt file
    raises `PinsetError`, so the proxy does not start)."""

    def __init__(self, path: str, limit: int = MAX_LEARNED_HOSTS) -> None:
        self.path = path
        self.limit = limit
        self.hosts: dict[str, LearnedHost]
        self._signature: Signature
        self.hosts, self._signature = read_learned_signed(path)
        self._pending: dict[str, LearnedHost] = {}  # learned here, not yet in the file
        self._writing: asyncio.Task[None] | None = None
        metrics.record_learned_hosts(len(self.hosts))

    def view(self) -> Learned:
        return Learned(self.hosts, full=len(self.hosts) >= self.limit)

    def refresh_if_changed(self) -> bool:
        """Before learning a host: has another process (a `--workers` sibling) written the file
        since this one last read or wrote it? Then read it now, so a host it learned is
        enforced here rather than learned again. A `stat`, and a read only after a change:
        bounded (the file is capped) and rare (once per new host)."""
        if signature(self.path) == self._signature:
            return False
        try:
            hosts, self._signature = read_learned_signed(self.path)
        except PinproxyError as e:
            logger.error("pinproxy kept the learned hosts it had: %s", e)
            return False
        self._adopt(hosts)
        return True

    def learn(self, decision: Decision) -> None:
        """Record the SPKI pins of the verified chain's leaf and issuer for `decision.host`."""
        host = decision.host
        if host in self.hosts:  # decided against a view taken on this thread: not reached
            return
        pins = tuple(dict.fromkeys(cert.spki for cert in decision.chain[:2]))
        if not pins:
            raise RuntimeError(f"no verified chain to learn {host} from")
        entry = LearnedHost(host, pins, dt.datetime.now(dt.UTC).replace(microsecond=0))
        self.hosts[host] = entry
        self._pending[host] = entry
        metrics.record_learned_hosts(len(self.hosts), learned_one=True)
        logger.warning("pinproxy learned %s on first use: %s (leaf %s); enforced from now on",
                       host, " ".join(str(pin) for pin in pins), decision.chain[0].subject,
                       extra={"event": "learned", "host": host,
                              "pins": [str(pin) for pin in pins]})
        self._schedule_write()

    def _schedule_write(self) -> None:
        if self._writing is not None and not self._writing.done():
            return  # the running write takes what is pending when it finishes
        self._writing = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        while self._pending:
            batch = dict(self._pending)
            try:
                merged, self._signature = await asyncio.to_thread(merge_signed, self.path,
                                                                  batch)
            except (OSError, PinproxyError) as e:
                logger.error("pinproxy could not write learn file %s: %s; what was learned is "
                             "enforced until a restart, and the next learned host or SIGHUP "
                             "tries again", quote(self.path), getattr(e, "strerror", None) or e)
                return
            for host, entry in batch.items():
                if self._pending.get(host) is entry:
                    del self._pending[host]
            self._adopt(merged)

    async def reread(self) -> None:
        """SIGHUP: read the file again (after `pinproxy learned forget`, or what other workers
        learned). A file that does not read is logged, and what is in memory stays."""
        try:
            hosts, self._signature = await asyncio.to_thread(read_learned_signed, self.path)
        except PinproxyError as e:
            logger.error("pinproxy kept the learned hosts it had: %s", e)
            return
        self._adopt(hosts)
        if self._pending:
            self._schedule_write()

    def _adopt(self, hosts: dict[str, LearnedHost]) -> None:
        """The file is the authority; only what is not written yet is added to it."""
        for host, entry in hosts.items():
            mine = self.hosts.get(host)
            if mine is not None and mine.pins != entry.pins:
                logger.warning("pinproxy: another process learned %s first; enforcing its "
                               "pins %s", host, " ".join(str(pin) for pin in entry.pins))
        self.hosts = {**hosts, **self._pending}
        metrics.record_learned_hosts(len(self.hosts))
