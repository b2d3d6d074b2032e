"""Bootstrap addresses: their exact syntax, and the addresses a replicator may never reach unless allowed.

A bootstrap string is where workers connect, so it is also a way to make them connect anywhere: to the cloud's
instance metadata service, to the worker's own loopback (the database, Redis), to link-local services. Without a
check, the connection error echoed in StateInfo would even turn Ferry into a port scanner. Every bootstrap
address is therefore checked twice:

- when a request carries it (CreateReplicator): the syntax exactly (``host:port[,host:port...]``, ports 1-65535,
  IPv6 in brackets, no whitespace or control characters) and, for literal IPs and well-known names, the address
  classes below;
- when a worker resolves it (``workers/fleet/address_vetting.py``): every address the name resolves to, so a DNS
  name pointing at a refused address is caught too.

Refused unless ``FERRY_ALLOWED_BOOTSTRAP`` allows them: loopback (127.0.0.0/8, ::1, ``localhost``), link-local
(169.254.0.0/16, fe80::/10), cloud metadata endpoints (169.254.169.254, fd00:ec2::254, 100.100.100.200,
``metadata.google.internal``), the unspecified, multicast and reserved ranges. ``FERRY_ALLOWED_BOOTSTRAP`` is a
list of CIDRs (addresses in them are accepted) and host patterns (``*.kafka.internal``: names matching them are
accepted with whatever they resolve to). Private ranges (10/8, 172.16/12, 192.168/16) are where Kafka usually
runs and are accepted: the default means "any routable address".
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_BOOTSTRAP_LENGTH = 4096
MAX_BROKERS = 64
_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_PORT = re.compile(r"^[0-9]{1,5}$")

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
METADATA_NAMES = (
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
)
LOOPBACK_NAMES = ("localhost", "*.localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


@dataclass(frozen=True)
class Broker:
    host: str  # a host name in lower case, or an IP address as written (without brackets)
    port: int
    ip: IPAddress | None  # set when ``host`` is a literal IP address

    def __str__(self) -> str:
        return (
            f"[{self.host}]:{self.port}" if self.ip is not None and self.ip.version == 6 else f"{self.host}:{self.port}"
        )


def parse_bootstrap(text: str) -> list[Broker]:
    """The brokers of a bootstrap string; ValueError with the reason when it is not exactly one."""
    if not text or len(text) > MAX_BOOTSTRAP_LENGTH:
        raise ValueError(f"must be 1 to {MAX_BOOTSTRAP_LENGTH} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise ValueError("must not contain whitespace or control characters")
    entries = text.split(",")
    if len(entries) > MAX_BROKERS:
        raise ValueError(f"must list at most {MAX_BROKERS} brokers")
    return [_parse_broker(entry) for entry in entries]


def _shown(text: str) -> str:
    return repr(text[:100] + ("..." if len(text) > 100 else ""))


def _parse_broker(entry: str) -> Broker:
    if entry.startswith("["):
        host, sep, port = entry[1:].partition("]:")
        if not sep:
            raise ValueError(f"{_shown(entry)} is not [IPv6 address]:port")
        try:
            ip: IPAddress | None = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{_shown(entry)}: not an IPv6 address") from None
    else:
        host, sep, port = entry.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{_shown(entry)} is not host:port")
        if ":" in host:
            raise ValueError(f"{_shown(entry)}: an IPv6 address must be written in brackets, [address]:port")
        ip = _ipv4(host)
        if ip is None:
            labels = host.rstrip(".").split(".")
            if len(host) > 253 or not all(_HOSTNAME_LABEL.match(label) for label in labels):
                raise ValueError(f"{_shown(entry)}: not a host name or IP address")
            host = host.rstrip(".").lower()
    if not _PORT.match(port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{_shown(entry)}: the port must be a number from 1 to 65535")
    return Broker(host if ip is None else str(ip), int(port), ip)


_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$", re.IGNORECASE)


def _ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a numeric host means to the operating system's resolver, which also reads hexadecimal,
    octal and short forms (``0xa9fea9fe`` and ``2852039166`` are both 169.254.169.254): checking only the dotted
    form would let those through."""
    if not _NUMERIC_HOST.match(host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        raise ValueError(f"{_shown(host)} is not an IPv4 address") from None


class AddressPolicy:
    """Which bootstrap addresses workers may connect to (see the module's docstring)."""

    def __init__(self, allowed: Sequence[str] = ()) -> None:
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.host_patterns: list[str] = []
        for written in allowed:
            entry = written.strip()
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if not re.fullmatch(r"[A-Za-z0-9.*?-]+", entry):
                    raise ValueError(
                        f"allowed bootstrap entry {entry!r} is neither a CIDR nor a host pattern"
                    ) from None
                self.host_patterns.append(entry.lower())

    def host_allowed(self, host: str) -> bool:
        return any(fnmatch.fnmatchcase(host.lower(), pattern) for pattern in self.host_patterns)

    def address_refusal(self, ip: IPAddress) -> str | None:
        """Why workers may not connect to this address, or None."""
        if any(ip in network for network in self.networks):
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return self.address_refusal(ip.ipv4_mapped)
        if ip in METADATA_ADDRESSES:
            return "a cloud metadata endpoint"
        if ip.is_loopback:
            return "a loopback address"
        if ip.is_link_local:
            return "a link-local address"
        if ip.is_unspecified:
            return "the unspecified address"
        if ip.is_multicast:
            return "a multicast address"
        if ip.is_reserved or (isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255")):
            return "a reserved address"
        return None

    def name_refusal(self, host: str) -> str | None:
        """Why workers may not connect to this host name (before resolving it), or None."""
        if self.host_allowed(host):
            return None
        if any(fnmatch.fnmatchcase(host, name) for name in METADATA_NAMES):
            return "a cloud metadata endpoint"
        if any(fnmatch.fnmatchcase(host, name) for name in LOOPBACK_NAMES):
            return "a loopback address"
        return None

    def broker_refusal(self, broker: Broker) -> str | None:
        if broker.ip is not None:
            return self.address_refusal(broker.ip)
        return self.name_refusal(broker.host)

    def resolved_refusal(self, broker: Broker, addresses: Iterable[IPAddress]) -> str | None:
        """Why the addresses a broker's name resolved to may not be reached, or None."""
        if broker.ip is None and self.host_allowed(broker.host):
            return None
        for ip in addresses:
            reason = self.address_refusal(ip)
            if reason is not None:
                return reason
        return None
