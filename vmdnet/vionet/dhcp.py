"""A sans-IO DHCP server for one local interface (RFC 2131; options RFC 2132).

What lives here: parsing a guest's DHCP frame (Ethernet/IPv4/UDP/BOOTP,
every field bounds-checked), the state of its one lease, and building the
reply frame with correct checksums.  What does not: sockets, threads, the
clock.  `DhcpServer.receive(frame, now)` returns the reply frame or None;
`now` is seconds on any monotonic clock.  A frame that is malformed, or
not for this server, is ignored and counted; nothing raises on guest input.

A local interface has exactly one client: the guest behind this vionet
(`client_mac`), and one address to give it: the other end of the /31 the
daemon carved from `local prefix`, whose host end is the router and the
server.  Requests from any other hardware address are ignored.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import struct
from dataclasses import dataclass, field

from vmdnet.offload import checksum

log = logging.getLogger(__name__)

ETH_HLEN = 14
ETH_ALEN = 6
ETH_P_IPV4 = 0x0800
BROADCAST_MAC = b"\xff" * ETH_ALEN
IPV4_HLEN = 20
IPPROTO_UDP = 17
IPV4_FRAG_MASK = 0x3FFF           # MF flag and fragment offset
IP_TTL = 64                       # RFC 1700's default TTL
UDP_HLEN = 8
DHCP_SERVER_PORT = 67
DHCP_CLIENT_PORT = 68
# BOOTP (RFC 951): op .. file is 236 bytes, then the DHCP magic cookie.
BOOTP_FIXED_LEN = 236
MAGIC_COOKIE = b"\x63\x82\x53\x63"
OPTIONS_OFF = BOOTP_FIXED_LEN + len(MAGIC_COOKIE)
BOOTREQUEST, BOOTREPLY = 1, 2
HTYPE_ETHER = 1
FLAG_BROADCAST = 0x8000
CHADDR_LEN = 16
SNAME_FILE_LEN = 64 + 128
# Replies are padded to BOOTP's 300-byte message (RFC 951), which some old
# clients insist on; RFC 1542 2.1 asks relay agents to accept it too.
MIN_BOOTP_LEN = 300
# How long a lease lasts; the guest renews at half of it (T1) as usual.
DEFAULT_LEASE_S = 3600
# Lease times are 32-bit seconds; 0xffffffff means "infinite" (RFC 2132 9.2).
LEASE_MAX_S = 0xFFFFFFFF
# The reply's Ethernet source: a locally administered address of our own
# (fe:e1:ba:d1 is what vmdnetd gives the host side of taps); the guest only
# learns the router's real MAC from ARP.
SERVER_MAC = bytes.fromhex("fee1bad1ffff")
IPV4_ANY = ipaddress.IPv4Address(0)
IPV4_BROADCAST = ipaddress.IPv4Address("255.255.255.255")

# BOOTP header: op htype hlen hops xid secs flags ciaddr yiaddr siaddr giaddr chaddr.
_BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s")


class Opt(enum.IntEnum):
    """DHCP options (RFC 2132) this server reads or writes."""

    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    REQUESTED_IP = 50
    LEASE_TIME = 51
    MSG_TYPE = 53
    SERVER_ID = 54
    MESSAGE = 56
    RENEWAL_T1 = 58
    REBINDING_T2 = 59
    CLIENT_ID = 61
    END = 255


class MsgType(enum.IntEnum):
    """Option 53 values (RFC 2132 9.6)."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


# Counter names: every one is present from the start.
COUNTERS = ("received", "offers", "acks", "naks", "releases", "declines", "informs",
            "malformed", "ignored")


class Malformed(ValueError):
    """Internal: the frame breaks a length or field rule (counted, never raised out)."""


class NotForUs(ValueError):
    """Internal: a well-formed frame this server does not answer (counted)."""


@dataclass(frozen=True)
class DhcpConfig:
    """What the server hands out: `client` (address/prefix) to `client_mac`."""

    client_mac: bytes
    client: ipaddress.IPv4Interface
    router: ipaddress.IPv4Address
    lease_s: int = DEFAULT_LEASE_S
    server_mac: bytes = SERVER_MAC

    def __post_init__(self) -> None:
        for name in ("client_mac", "server_mac"):
            if len(getattr(self, name)) != ETH_ALEN:
                raise ValueError(f"{name} must be {ETH_ALEN} bytes")
        if self.client_mac[0] & 1:
            raise ValueError("client_mac is a group address")
        if self.router not in self.client.network or self.router == self.client.ip:
            raise ValueError(f"router {self.router} is not another address of {self.client}")
        if self.client.network.prefixlen < 31 and self.client.ip in (
                self.client.network.network_address, self.client.network.broadcast_address):
            raise ValueError(f"{self.client.ip} is not a host address of {self.client.network}")
        if not 1 <= self.lease_s <= LEASE_MAX_S:
            raise ValueError(f"lease time {self.lease_s} outside 1..{LEASE_MAX_S}")

    @classmethod
    def parse(cls, text: str, client_mac: bytes, **kw: object) -> DhcpConfig:
        """From vionet's `--dhcp ADDR/PREFIXLEN,ROUTER`, e.g. 198.18.4.1/31,198.18.4.0."""
        addr, sep, router = text.partition(",")
        if not sep:
            raise ValueError(f"{text!r}: expected ADDR/PREFIXLEN,ROUTER")
        if "/" not in addr:
            raise ValueError(f"{addr!r}: the prefix length is missing")
        return cls(client_mac, ipaddress.IPv4Interface(addr.strip()),
                   ipaddress.IPv4Address(router.strip()), **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Request:
    """The fields of a guest's DHCP message that the server acts on."""

    xid: int
    flags: int
    ciaddr: ipaddress.IPv4Address
    giaddr: ipaddress.IPv4Address
    chaddr: bytes                   # all 16 bytes, echoed in the reply
    msg_type: MsgType
    options: dict[int, bytes] = field(default_factory=dict)

    def addr_option(self, opt: Opt) -> ipaddress.IPv4Address | None:
        raw = self.options.get(opt)
        return None if raw is None else ipaddress.IPv4Address(raw)


def _ipv4_payload(frame: bytes) -> tuple[bytes, int]:
    """The UDP datagram of an untagged IPv4 frame, and the IP header length."""
    if len(frame) < ETH_HLEN + IPV4_HLEN + UDP_HLEN:
        raise Malformed("short frame")
    if struct.unpack_from("!H", frame, 12)[0] != ETH_P_IPV4:
        raise Malformed("not IPv4")
    ip = frame[ETH_HLEN:]
    ihl = (ip[0] & 0x0F) * 4
    (total,) = struct.unpack_from("!H", ip, 2)
    if ip[0] >> 4 != 4 or ihl < IPV4_HLEN or total < ihl + UDP_HLEN or total > len(ip):
        raise Malformed("IPv4 header lengths")
    if checksum(ip[:ihl]) != 0xFFFF:
        raise Malformed("IPv4 header checksum")
    (frag,) = struct.unpack_from("!H", ip, 6)
    if ip[9] != IPPROTO_UDP or frag & IPV4_FRAG_MASK:
        raise Malformed("not an unfragmented UDP datagram")
    return ip[ihl:total], ihl


def _udp_payload(udp: bytes) -> bytes:
    # The UDP checksum is not checked: a guest with NEEDS_CSUM leaves it
    # partial, and the frame never left this host (it came from guest memory).
    _, dport, ulen = struct.unpack_from("!HHH", udp)
    if ulen < UDP_HLEN or ulen > len(udp):
        raise Malformed("UDP length")
    if dport != DHCP_SERVER_PORT:
        raise NotForUs("not to the DHCP server port")
    return udp[UDP_HLEN:ulen]


def parse_options(data: bytes) -> dict[int, bytes]:
    """Options after the magic cookie; repeated ones concatenated (RFC 3396)."""
    opts: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        code = data[i]
        if code == Opt.PAD:
            i += 1
            continue
        if code == Opt.END:
            return opts
        if i + 2 > len(data) or i + 2 + data[i + 1] > len(data):
            raise Malformed(f"option {code} runs past the message")
        opts[code] = opts.get(code, b"") + data[i + 2:i + 2 + data[i + 1]]
        i += 2 + data[i + 1]
    return opts            # no END: tolerated (the message ended cleanly)


def parse_request(frame: bytes) -> Request:
    """A guest's DHCP message; Malformed or NotForUs when it cannot be answered."""
    udp, _ = _ipv4_payload(frame)
    msg = _udp_payload(udp)
    if len(msg) < OPTIONS_OFF or msg[BOOTP_FIXED_LEN:OPTIONS_OFF] != MAGIC_COOKIE:
        raise Malformed("short message or no DHCP magic cookie")
    op, htype, hlen, _, xid, _, flags, ci, _, _, gi, chaddr = _BOOTP.unpack_from(msg)
    if op != BOOTREQUEST:
        raise NotForUs("not a BOOTREQUEST")
    if htype != HTYPE_ETHER or hlen != ETH_ALEN:
        raise Malformed("not an Ethernet hardware address")
    opts = parse_options(msg[OPTIONS_OFF:])
    raw_type = opts.get(Opt.MSG_TYPE)
    if raw_type is None:
        raise NotForUs("plain BOOTP")
    if len(raw_type) != 1 or raw_type[0] not in MsgType._value2member_map_:
        raise Malformed("bad message type option")
    for opt in (Opt.REQUESTED_IP, Opt.SERVER_ID):
        if opt in opts and len(opts[opt]) != 4:
            raise Malformed(f"option {opt.name} is not 4 bytes")
    return Request(xid, flags, ipaddress.IPv4Address(ci), ipaddress.IPv4Address(gi), chaddr,
                   MsgType(raw_type[0]), opts)


class DhcpServer:
    """One lease for one guest; frames in, reply frames out."""

    def __init__(self, cfg: DhcpConfig) -> None:
        self.cfg = cfg
        self.lease_until: float | None = None   # `now` units; None: no lease bound
        self.counters = dict.fromkeys(COUNTERS, 0)

    def receive(self, frame: bytes, now: float) -> bytes | None:
        """The reply to a guest's frame, or None; never raises on guest input."""
        self.counters["received"] += 1
        try:
            req = parse_request(frame)
            self._check_client(req)
            return self._answer(req, now)
        except Malformed as exc:
            self.counters["malformed"] += 1
            log.debug("DHCP frame ignored (malformed): %s", exc)
        except NotForUs as exc:
            self.counters["ignored"] += 1
            log.debug("DHCP frame ignored: %s", exc)
        return None

    def lease_active(self, now: float) -> bool:
        return self.lease_until is not None and now < self.lease_until

    def stats(self, now: float) -> dict[str, object]:
        return {"client": str(self.cfg.client), "router": str(self.cfg.router),
                "lease_active": self.lease_active(now), **self.counters}

    def _check_client(self, req: Request) -> None:
        if req.chaddr[:ETH_ALEN] != self.cfg.client_mac:
            raise NotForUs("another client's hardware address")
        if req.giaddr != IPV4_ANY:
            raise NotForUs("relayed: a local interface has no relay agents")
        server_id = req.addr_option(Opt.SERVER_ID)
        if server_id is not None and server_id != self.cfg.router and \
                req.msg_type in (MsgType.REQUEST, MsgType.RELEASE, MsgType.DECLINE):
            raise NotForUs(f"for server {server_id}")

    def _answer(self, req: Request, now: float) -> bytes | None:
        t = req.msg_type
        if t == MsgType.DISCOVER:
            self.counters["offers"] += 1
            return self._reply(req, MsgType.OFFER)
        if t == MsgType.REQUEST:
            return self._request(req, now)
        if t == MsgType.INFORM:
            if req.ciaddr == IPV4_ANY:
                raise Malformed("DHCPINFORM without ciaddr")
            self.counters["informs"] += 1
            return self._reply(req, MsgType.ACK, inform=True)
        if t == MsgType.RELEASE:
            if req.ciaddr == self.cfg.client.ip:
                self.lease_until = None
                self.counters["releases"] += 1
                return None
            raise NotForUs("release of another address")
        if t == MsgType.DECLINE:
            # The guest found its address in use: nothing else to offer; log it.
            self.lease_until = None
            self.counters["declines"] += 1
            log.warning("guest %s declined %s", self.cfg.client_mac.hex(":"), self.cfg.client.ip)
            return None
        raise NotForUs(f"{t.name} is a server's message")

    def _request(self, req: Request, now: float) -> bytes:
        """SELECTING / INIT-REBOOT name the address in option 50, RENEWING /
        REBINDING in ciaddr (RFC 2131 4.3.2)."""
        wanted = req.addr_option(Opt.REQUESTED_IP)
        if wanted is None:
            wanted = req.ciaddr if req.ciaddr != IPV4_ANY else None
        if wanted is None:
            raise Malformed("DHCPREQUEST names no address")
        if wanted != self.cfg.client.ip:
            self.counters["naks"] += 1
            return self._reply(req, MsgType.NAK)
        self.lease_until = now + self.cfg.lease_s
        self.counters["acks"] += 1
        return self._reply(req, MsgType.ACK)

    # --- building the reply ---------------------------------------------------------
    def _options(self, req: Request, t: MsgType, inform: bool) -> bytes:
        c = self.cfg
        opts = [(Opt.MSG_TYPE, bytes([t])), (Opt.SERVER_ID, c.router.packed)]
        if t == MsgType.NAK:
            opts.append((Opt.MESSAGE, f"only {c.client.ip} is served here".encode()))
        else:
            if not inform:
                lease = c.lease_s
                opts += [(Opt.LEASE_TIME, struct.pack("!I", lease)),
                         (Opt.RENEWAL_T1, struct.pack("!I", lease // 2)),
                         (Opt.REBINDING_T2, struct.pack("!I", lease * 7 // 8))]
            opts += [(Opt.SUBNET_MASK, c.client.network.netmask.packed),
                     (Opt.ROUTER, c.router.packed)]
        if Opt.CLIENT_ID in req.options and len(req.options[Opt.CLIENT_ID]) <= 255:
            opts.append((Opt.CLIENT_ID, req.options[Opt.CLIENT_ID]))   # RFC 6842
        return b"".join(bytes([code, len(v)]) + v for code, v in opts) + bytes([Opt.END])

    def _destination(self, req: Request, t: MsgType) -> tuple[ipaddress.IPv4Address, bytes]:
        """RFC 2131 4.1, without relay agents: NAKs are broadcast; a client with
        an address gets unicast; else the broadcast bit decides."""
        if t == MsgType.NAK or (req.ciaddr == IPV4_ANY and req.flags & FLAG_BROADCAST):
            return IPV4_BROADCAST, BROADCAST_MAC
        if req.ciaddr != IPV4_ANY:
            return req.ciaddr, self.cfg.client_mac
        return self.cfg.client.ip, self.cfg.client_mac

    def _reply(self, req: Request, t: MsgType, inform: bool = False) -> bytes:
        c = self.cfg
        yiaddr = IPV4_ANY if inform or t == MsgType.NAK else c.client.ip
        ciaddr = req.ciaddr if t != MsgType.NAK else IPV4_ANY
        msg = _BOOTP.pack(BOOTREPLY, HTYPE_ETHER, ETH_ALEN, 0, req.xid, 0, req.flags,
                          ciaddr.packed, yiaddr.packed, IPV4_ANY.packed, req.giaddr.packed,
                          req.chaddr)
        msg += bytes(SNAME_FILE_LEN) + MAGIC_COOKIE + self._options(req, t, inform)
        msg += bytes(max(0, MIN_BOOTP_LEN - len(msg)))
        dst_ip, dst_mac = self._destination(req, t)
        return build_udp_frame(c.server_mac, dst_mac, c.router, dst_ip,
                               DHCP_SERVER_PORT, DHCP_CLIENT_PORT, msg)


def build_udp_frame(src_mac: bytes, dst_mac: bytes, src: ipaddress.IPv4Address,
                    dst: ipaddress.IPv4Address, sport: int, dport: int, payload: bytes) -> bytes:
    """An Ethernet/IPv4/UDP frame with both checksums filled in."""
    ulen = UDP_HLEN + len(payload)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, IPV4_HLEN + ulen, 0, 0, IP_TTL,
                               IPPROTO_UDP, 0, src.packed, dst.packed))
    struct.pack_into("!H", ip, 10, ~checksum(ip) & 0xFFFF)
    udp = bytearray(struct.pack("!HHHH", sport, dport, ulen, 0) + payload)
    pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, IPPROTO_UDP, ulen)
    csum = ~checksum(udp, checksum(pseudo)) & 0xFFFF
    struct.pack_into("!H", udp, 6, csum or 0xFFFF)   # 0 means "no checksum" in UDP
    return dst_mac + src_mac + struct.pack("!H", ETH_P_IPV4) + bytes(ip) + bytes(udp)
