"""Bootstrap addresses vetted where workers resolve them (``models/bootstrap.py`` has the rules).

The API checks a bootstrap string's syntax and literal addresses when a request carries it; a host name can still
resolve to a refused address (the metadata endpoint, the worker's own loopback), so every unit resolves its
clusters' names before it connects and refuses what the policy refuses. Answers are kept for ``CACHE_SECONDS``:
a metadata unit asks every pass. A name that does not resolve is no refusal here: connecting fails on its own,
and the failure is reported as such.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from typing import Protocol

from models.bootstrap import AddressPolicy, IPAddress, parse_bootstrap

CACHE_SECONDS = 30.0
RESOLVE_TIMEOUT_SECONDS = 5.0


class Reachable(Protocol):
    @property
    def bootstrap_servers(self) -> str: ...


class AddressVetting:
    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._answers: dict[str, tuple[float, str | None]] = {}

    async def refusal(self, connection: Reachable) -> str | None:
        """None when workers may connect to every bootstrap address of ``connection``, else why not."""
        cached = self._answers.get(connection.bootstrap_servers)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        answer = await self._vet(connection.bootstrap_servers)
        self._answers[connection.bootstrap_servers] = (time.monotonic(), answer)
        return answer

    async def _vet(self, bootstrap: str) -> str | None:
        try:
            brokers = parse_bootstrap(bootstrap)
        except ValueError as exc:
            return f"the bootstrap servers are not a host:port list ({exc})"
        loop = asyncio.get_running_loop()
        for broker in brokers:
            reason = self.policy.broker_refusal(broker)
            if reason is not None:
                return f"{broker} is {reason}, which replicators may not connect to"
            if broker.ip is not None:
                continue
            try:
                async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
                    infos = await loop.getaddrinfo(broker.host, broker.port, type=socket.SOCK_STREAM)
            except (OSError, TimeoutError):
                continue
            addresses: set[IPAddress] = set()
            for info in infos:
                try:
                    addresses.add(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
                except ValueError:
                    continue
            reason = self.policy.resolved_refusal(broker, addresses)
            if reason is not None:
                return f"{broker.host} resolves to {reason}, which replicators may not connect to"
        return None
