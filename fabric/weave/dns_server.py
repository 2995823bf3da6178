"""The weaveDNS server: UDP and TCP on one address, answers from a :class:`WeaveDNS`.

As Weave Net's ``nameserver/dns.go``: A queries in the domain get every live address,
rotated round-robin per name (weave shuffles; a rotation is as fair and testable), TTL
1 s (clients should not cache; names move); a name we hold asked for another type
(AAAA...) gets NOERROR with no answer (RFC 4074), so resolvers fall back to A; an
unknown name in the domain is NXDOMAIN. Single-label names are tried in the domain first.
PTR queries for addresses we hold are answered here, everything else is forwarded to the
upstream servers (the ``nameserver`` lines of ``/etc/resolv.conf`` of the namespace the
server runs in, without itself, re-read when the file changes; or a given list) over the
client's transport, each with ``timeout``; SERVFAIL when none answers. UDP answers that do
not fit (512 bytes or the client's EDNS size) are truncated with TC set.

Malformed datagrams, responses, queries with other than one question and names over
255 octets are dropped and counted; the server keeps running. Queries are handled by a
bounded worker pool (a slow upstream cannot stall local answers); when it is full,
datagrams are dropped and counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

from fabric.errors import ConfigError
from fabric.mesh.ratelog import RateLimitedLog
from fabric.weave.dns import WeaveDNS
from fabric.weave.dns_conf import nameservers, parse_upstream

__all__ = ["DnsServer", "TTL", "RESOLV_CONF"]

TTL = 1  # weave's DefaultTTL
RESOLV_CONF = "/etc/resolv.conf"
_ARPA = dns.name.from_text("in-addr.arpa.")
_MAX_TCP_CONNS = 64
T = TypeVar("T")
_TCP_IDLE = 5.0
_log = logging.getLogger("fabric.weave.dns")
_IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # Linux; also covers IPv6 sockets


class DnsServer:
    def __init__(self, resolver: WeaveDNS, address: str, port: int = 53, *,
                 upstream: list[str] | None = None, timeout: float = 2.0,
                 workers: int = 8, resolv_conf: str = RESOLV_CONF,
                 freebind: bool = False) -> None:
        self.dns, self.address, self.port = resolver, address, port
        self.freebind = freebind  # bind before the (bridge) address exists
        self.timeout, self.resolv_conf = timeout, resolv_conf
        self._fixed = [parse_upstream(u) for u in upstream] if upstream is not None else None
        self._conf_cache: tuple[float, float, list[tuple[str, int]]] = (0.0, -1.0, [])
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()  # counters and the log are used from worker threads
        self._rlog = RateLimitedLog(_log)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="weavedns")
        self._inflight = threading.BoundedSemaphore(workers * 16)
        self._tcp_slots = threading.BoundedSemaphore(_MAX_TCP_CONNS)
        self._tcp_open: set[socket.socket] = set()  # shut down by stop()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.udp: socket.socket | None = None
        self.tcp: socket.socket | None = None

    # ---- lifecycle ------------------------------------------------------------------------
    def start(self) -> DnsServer:
        fam = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        try:
            self.udp = socket.socket(fam, socket.SOCK_DGRAM)
            self.tcp = socket.socket(fam, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.freebind:
                for s in (self.udp, self.tcp):
                    s.setsockopt(socket.SOL_IP, _IP_FREEBIND, 1)
            self.udp.bind((self.address, self.port))
            self.port = self.udp.getsockname()[1]
            self.tcp.bind((self.address, self.port))
            self.tcp.listen(64)
        except OSError as exc:
            self._close()
            raise ConfigError(f"weaveDNS cannot listen on {self.address}:{self.port}: "
                              f"{exc.strerror}", field="dns_address",
                              fix="free the port or give another address") from exc
        self.udp.settimeout(0.2)  # so stop() is noticed
        self.tcp.settimeout(0.2)
        _log.info("weaveDNS: serving %s on %s:%d (UDP, TCP); upstream %s", self.dns.domain,
                  self.address, self.port,
                  "from " + self.resolv_conf if self._fixed is None else self._fixed or "none")
        for fn in (self._udp_loop, self._tcp_loop):
            t = threading.Thread(target=fn, name=f"weavedns-{fn.__name__[1:4]}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            conns = list(self._tcp_open)
        for c in conns:  # wake their reader threads now, not after the idle timeout
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._close()

    def _close(self) -> None:
        for s in (self.udp, self.tcp):
            if s is not None:
                s.close()

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def _warn(self, reason: str, who: str, msg: str, *args: Any) -> None:
        with self._lock:
            self._rlog(logging.WARNING, reason, who, msg, *args)

    def status(self) -> dict[str, Any]:
        with self._lock:
            counters = dict(self.counters)
        return {"address": f"{self.address}:{self.port}", "ttl": TTL,
                "upstream": [f"{h}:{p}" for h, p in self.upstreams()],
                "counters": counters}

    # ---- upstreams ------------------------------------------------------------------------
    def upstreams(self) -> list[tuple[str, int]]:
        if self._fixed is not None:
            return list(self._fixed)
        now = time.monotonic()
        checked, mtime, servers = self._conf_cache
        if now - checked < 5.0:
            return servers
        try:
            st = os.stat(self.resolv_conf)
            if st.st_mtime != mtime:
                with open(self.resolv_conf) as f:
                    servers = [(s, 53) for s in nameservers(f.read())
                               if not (s == self.address and self.port == 53)]
                mtime = st.st_mtime
        except OSError:
            self._count("resolv_conf_unreadable")
        self._conf_cache = (now, mtime, servers)
        return servers

    # ---- transports -----------------------------------------------------------------------
    def _received(self, receive: Callable[[], T]) -> Iterator[T]:
        """What ``receive()`` (recvfrom / accept, with a timeout) returns, until stopped;
        timeouts and socket errors are skipped (stop() closes the socket under it)."""
        while not self._stop.is_set():
            try:
                got = receive()
            except OSError:  # TimeoutError included
                continue
            yield got

    def _udp_loop(self) -> None:
        udp = self.udp
        assert udp is not None
        for wire, peer in self._received(lambda: udp.recvfrom(65535)):
            self._count("queries_udp")
            if not self._inflight.acquire(blocking=False):
                self._count("dropped_busy")
                continue
            self._pool.submit(self._udp_one, wire, peer)

    def _udp_one(self, wire: bytes, peer: Any) -> None:
        try:
            out = self.handle(wire, tcp=False, client=str(peer[0]))
            if out is not None and self.udp is not None:
                self.udp.sendto(out, peer)
        except OSError:
            self._count("send_failed")
        finally:
            self._inflight.release()

    def _tcp_loop(self) -> None:
        tcp = self.tcp
        assert tcp is not None
        for conn, peer in self._received(tcp.accept):
            if not self._tcp_slots.acquire(blocking=False):
                self._count("dropped_busy")
                conn.close()
                continue
            threading.Thread(target=self._tcp_conn, args=(conn, str(peer[0])), daemon=True,
                             name="weavedns-tcpconn").start()

    def _tcp_conn(self, conn: socket.socket, client: str) -> None:
        """Length-prefixed queries, answered in order, until idle or closed."""
        with self._lock:
            self._tcp_open.add(conn)
        try:
            conn.settimeout(_TCP_IDLE)
            while not self._stop.is_set():
                head = _recv_exact(conn, 2)
                if head is None:
                    return
                (n,) = struct.unpack(">H", head)
                wire = _recv_exact(conn, n) if n else b""
                if wire is None:
                    return
                self._count("queries_tcp")
                out = self.handle(wire, tcp=True, client=client)
                if out is None:
                    return  # a malformed stream: close it
                conn.sendall(struct.pack(">H", len(out)) + out)
        except OSError:
            pass
        finally:
            with self._lock:
                self._tcp_open.discard(conn)
            conn.close()
            self._tcp_slots.release()

    # ---- queries --------------------------------------------------------------------------
    def handle(self, wire: bytes, tcp: bool, client: str = "?") -> bytes | None:
        """One query in, the answer's wire form out; None when the query is dropped."""
        try:
            q = dns.message.from_wire(wire)
            if q.flags & dns.flags.QR or len(q.question) != 1:
                raise ValueError("a response, or not exactly one question")
        except Exception as exc:  # anything a hostile datagram triggers is "malformed"
            self._count("dropped_malformed")
            self._warn("malformed", client, "weaveDNS: dropped a malformed query from %s: %s",
                       client, type(exc).__name__)
            return None
        if q.opcode() != dns.opcode.QUERY:
            return self._error(q, dns.rcode.NOTIMP)
        qs = q.question[0]
        fq = qs.name.to_text().lower()
        if qs.rdclass == dns.rdataclass.IN:
            if self.dns.in_domain(fq):
                return self._local(q, fq, tcp)
            if len(qs.name) == 2:  # single label: the domain first, as weave
                fq_in = f"{fq}{self.dns.domain}"
                if self.dns.answer(fq_in):
                    return self._local(q, fq_in, tcp)
            if qs.rdtype == dns.rdatatype.PTR and qs.name.is_subdomain(_ARPA):
                out = self._reverse(q, tcp)
                if out is not None:
                    return out
        return self._forward(q, tcp)

    def _reply(self, q: dns.message.Message, rcode: int = dns.rcode.NOERROR,
               authoritative: bool = True) -> dns.message.Message:
        r = dns.message.make_response(q)
        r.flags |= dns.flags.RA | (dns.flags.AA if authoritative else 0)
        r.set_rcode(dns.rcode.Rcode(rcode))
        return r

    def _error(self, q: dns.message.Message, rcode: int) -> bytes:
        return self._reply(q, rcode, authoritative=False).to_wire()

    def _local(self, q: dns.message.Message, fq: str, tcp: bool) -> bytes:
        qs = q.question[0]
        ips = self.dns.answer(fq)
        if not ips:
            self._count("nxdomain")
            return self._reply(q, dns.rcode.NXDOMAIN).to_wire()
        self._count("answered_local")
        if qs.rdtype not in (dns.rdatatype.A, dns.rdatatype.ANY):
            return self._reply(q).to_wire()
        return self._fit(q, qs.name, dns.rdatatype.A, ips, tcp)

    def _reverse(self, q: dns.message.Message, tcp: bool) -> bytes | None:
        qs = q.question[0]
        try:
            ip = dns.reversename.to_address(qs.name)
        except (dns.exception.SyntaxError, ValueError):
            return None
        names = self.dns.reverse(ip)
        if not names:
            return None
        self._count("answered_local")
        return self._fit(q, qs.name, dns.rdatatype.PTR, names, tcp)

    def _fit(self, q: dns.message.Message, name: dns.name.Name, rdtype: int,
             values: list[str], tcp: bool) -> bytes:
        """Answer with as many records as fit; TC set when some were left out."""
        limit = 65535 if tcp else max(512, q.payload if q.edns >= 0 else 512)
        n = len(values)
        while True:
            r = self._reply(q)
            r.answer.append(dns.rrset.from_text_list(name, TTL, dns.rdataclass.IN,
                                                     dns.rdatatype.RdataType(rdtype),
                                                     values[:n]))
            if n < len(values):
                r.flags |= dns.flags.TC
            try:
                # our rotation is the order (dnspython would shuffle it)
                return r.to_wire(max_size=limit, want_shuffle=False)
            except dns.exception.TooBig:
                if n <= 1:
                    r = self._reply(q)
                    r.flags |= dns.flags.TC
                    return r.to_wire()
                n //= 2

    def _forward(self, q: dns.message.Message, tcp: bool) -> bytes:
        servers = self.upstreams()
        if not servers:
            self._warn("upstream", "", "weaveDNS: no upstream server to forward %s to",
                       q.question[0].name)
            self._count("forward_failed")
            return self._error(q, dns.rcode.SERVFAIL)
        orig = q.id
        for host, port in servers:
            q.id = random.getrandbits(16)  # a fresh id per upstream try
            try:
                if tcp:
                    resp = dns.query.tcp(q, host, timeout=self.timeout, port=port)
                else:
                    resp = dns.query.udp(q, host, timeout=self.timeout, port=port,
                                         ignore_unexpected=True)
            except (dns.exception.DNSException, OSError, EOFError) as exc:
                self._count("upstream_errors")
                self._warn("upstream", f"{host}:{port}", "weaveDNS: upstream %s:%d failed: %s",
                           host, port, type(exc).__name__)
                continue
            resp.id = orig
            self._count("forwarded")
            return resp.to_wire()
        q.id = orig
        self._count("forward_failed")
        return self._error(q, dns.rcode.SERVFAIL)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
