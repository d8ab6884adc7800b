"""Which addresses the service may connect to (image fetches, manifests, webhook deliveries):
public ones, and private ones only when allow-listed (`fetch.allow`). Light (no requests): the HTTP
process checks a webhook URL's IP address with it at submit; `SafeFetcher` checks every address
a host resolves to, before connecting, with the same policy.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# IPv6 ranges that reach IPv4 hosts or are not routable on the internet, whatever Python's
# `is_global` of the day says: local-use NAT64 (RFC 8215), IPv4-compatible (deprecated, `::/96`
# holds `::127.0.0.1`), site-local (deprecated).
REFUSED_V6 = [
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("::/96"),
    ipaddress.IPv6Network("fec0::/10"),
]
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known prefix: the last 32 bits are IPv4


@dataclass
class AddressPolicy:
    """Public addresses pass; private/loopback/link-local/... only when allow-listed."""

    allow_hosts: set[str] = field(default_factory=set)
    allow_networks: list[IPNetwork] = field(default_factory=list)

    @classmethod
    def from_list(cls, entries: Iterable[str]) -> AddressPolicy:
        policy = cls()
        for entry in entries:
            try:
                policy.allow_networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                policy.allow_hosts.add(entry.lower())
        return policy

    def host_allowed(self, host: str) -> bool:
        return host.lower() in self.allow_hosts

    def address_allowed(self, address: str) -> bool:
        ip: IPAddress = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allow_networks):
            return True
        return _public(ip)


def literal_address(host: str) -> str | None:
    """The IP address `host` spells, in its usual form, or None for a host name. Every spelling
    the C resolver takes counts (`2130706433`, `0x7f000001`, `0177.1`, `127.1`: 127.0.0.1), not
    only the dotted quad: a URL naming one reaches that address without any DNS lookup."""
    try:
        return str(ipaddress.ip_address(host.strip("[]").split("%")[0]))
    except ValueError:
        pass
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except (OSError, UnicodeError, ValueError):
        return None


def _public(ip: IPAddress) -> bool:
    if not ip.is_global or ip.is_multicast:
        return False
    if isinstance(ip, ipaddress.IPv4Address):
        return True
    if any(ip in net for net in REFUSED_V6):
        return False
    # NAT64, 6to4 and Teredo addresses lead to the IPv4 host they embed: that one must be public.
    return all(_public(embedded) for embedded in _embedded_ipv4(ip))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    if ip in NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)  # server and client
    return []
