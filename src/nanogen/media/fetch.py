"""Fetch the input images clients name by URL, without letting them reach what they should not.

Clients send public image URLs (``inputImageUrls``, ``imageUrls``) and the server downloads them, so a
URL is a request the client makes *from inside our network* (server-side request forgery). Every hop:

1. is ``http`` or ``https`` with no ``user:pass@``;
2. has its host resolved **once** by the :data:`Resolver`; every address it returns must be public
   (not loopback, private, link-local, multicast, reserved, unspecified, shared 100.64/10, nor an
   IPv6 wrapper of one of those, nor a cloud metadata address), unless the host is in
   :attr:`FetchPolicy.allow_hosts` (tests, intranets). Metadata addresses are refused even then;
3. is connected to *that* address (the URL's host is replaced by the IP literal, the original
   ``Host`` header is sent, and for https ``sni_hostname`` makes TLS send and verify the real name),
   so a second DNS answer (rebinding) can never be used.

Redirects are followed by hand, up to ``max_redirects``, each hop checked again. The whole fetch
runs under one ``timeout_s``; the body is streamed and cut off past ``max_bytes``; finally
:func:`nanogen.media.images.probe_image` proves the bytes are an image within ``max_pixels``, in
bounded memory.
Every failure is a :class:`nanogen.errors.FetchError` with a short reason. Nothing is logged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from nanogen import __version__
from nanogen.engines.base import InputImage
from nanogen.errors import FetchError
from nanogen.media.images import probe_image_async
from nanogen.tls import ssl_context

if TYPE_CHECKING:
    from nanogen.settings import Settings

__all__ = ["CheckedTarget", "FetchPolicy", "ImageFetcher", "Resolver", "check_target", "system_resolver"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: ``(host, port) -> IP address strings``. The default asks the system (``getaddrinfo``).
Resolver = Callable[[str, int], Awaitable[list[str]]]

_MIB = 1024 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


def _normalize_host(host: str) -> str:
    host = host.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for fetching one URL. ``allow_hosts`` may reach non-public addresses (never metadata)."""

    allow_hosts: frozenset[str] = field(default_factory=frozenset)
    timeout_s: float = 15.0
    max_bytes: int = 20 * _MIB
    max_pixels: int = 64_000_000
    max_redirects: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow_hosts", frozenset(_normalize_host(h) for h in self.allow_hosts))

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        return cls(
            allow_hosts=frozenset(settings.fetch_allow_hosts),
            timeout_s=settings.fetch_timeout_s,
            max_bytes=settings.fetch_max_bytes,
            max_pixels=settings.fetch_max_pixels,
            max_redirects=settings.fetch_max_redirects,
        )


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the system resolver; addresses in its order, without repeats."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _Refused(Exception):
    """Internal: why this fetch stops. Becomes a FetchError for the URL the client gave."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address wraps: mapped, 6to4, Teredo, NAT64, IPv4-compatible."""
    if addr.ipv4_mapped is not None:
        return [addr.ipv4_mapped]
    if addr.sixtofour is not None:
        return [addr.sixtofour]
    if addr.teredo is not None:
        return list(addr.teredo)
    if addr in _NAT64 or (int(addr) >> 32 == 0 and int(addr) > 1):
        return [ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)]
    return []


def _why_refused(addr: IPAddress) -> str | None:
    """Why ``addr`` is not a public address, or None when it is."""
    if addr in _METADATA:
        return "is a cloud metadata address"
    if isinstance(addr, ipaddress.IPv6Address):
        wrapped = _embedded_ipv4(addr)
        if wrapped:
            for inner in wrapped:
                why = _why_refused(inner)
                if why is not None:
                    return f"wraps {inner}, which {why}"
            return None
    checks: tuple[tuple[bool, str], ...] = (
        (addr.is_loopback, "is loopback"),
        (addr.is_unspecified, "is unspecified"),
        (addr.is_link_local, "is link-local"),
        (addr.is_multicast, "is multicast"),
        (isinstance(addr, ipaddress.IPv4Address) and addr in _SHARED, "is shared (100.64.0.0/10)"),
        (addr.is_reserved, "is reserved"),
        (addr.is_private, "is private"),
        (isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local, "is private"),
        (not addr.is_global, "is not a public address"),
    )
    return next((why for refused, why in checks if refused), None)


def _size(n: int) -> str:
    if n % _MIB == 0:
        return f"{n // _MIB} MB"
    if n % 1024 == 0:
        return f"{n // 1024} KB"
    return f"{n} bytes"


def _shown(url: str) -> str:
    """The URL as errors may show it: credentials masked, very long URLs (data:) cut."""
    url = _USERINFO.sub(r"\1***@", url)
    return url if len(url) <= 256 else url[:256] + "..."


def _checked_url(url: httpx.URL) -> httpx.URL:
    if url.scheme not in ("http", "https"):
        raise _Refused(f"scheme {url.scheme or '(none)'!r} is not allowed, only http and https")
    if url.userinfo:
        raise _Refused("credentials in URLs are not allowed")
    if not url.raw_host:
        raise _Refused("the URL has no host")
    return url


def _transport_reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return "TLS certificate verification failed"
        if isinstance(cause, ssl.SSLError):
            return "TLS handshake failed"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.ConnectError):
        return "connection failed"
    return "connection failed: incomplete or malformed response"


async def _addresses(host: str, port: int, resolve: Resolver) -> tuple[list[IPAddress], bool]:
    """The addresses of ``host`` (resolved once), and whether it was an IP literal."""
    try:
        return [ipaddress.ip_address(host)], True
    except ValueError:
        pass
    try:
        answers = await resolve(host, port)
        addresses = [ipaddress.ip_address(a) for a in answers]
    except (OSError, ValueError):
        raise _Refused(f"could not resolve {host}") from None
    if not addresses:
        raise _Refused(f"could not resolve {host}")
    return addresses, False


@dataclass(frozen=True)
class CheckedTarget:
    """A URL that passed rules 1 and 2 (its host resolved once, every address checked), for callers
    that make their own request to it (webhook deliveries): aim it at ``addresses`` (rule 3)."""

    url: httpx.URL
    host: str
    addresses: tuple[IPAddress, ...]
    literal: bool

    def requests(
        self, method: str, headers: dict[str, str], content: bytes, timeout_s: float
    ) -> list[httpx.Request]:
        """One request per checked address, in the resolver's order, with the URL's own ``Host`` and
        (https) TLS name."""
        extensions: dict[str, Any] = {"timeout": httpx.Timeout(timeout_s).as_dict()}
        if self.url.scheme == "https" and not self.literal:
            extensions["sni_hostname"] = self.host
        headers = {"Host": self.url.netloc.decode("ascii"), **headers}
        try:
            return [
                httpx.Request(
                    method,
                    self.url.copy_with(host=str(a)),
                    headers=headers,
                    content=content,
                    extensions=extensions,
                )
                for a in dict.fromkeys(self.addresses)
            ]
        except httpx.InvalidURL:
            raise FetchError(
                _shown(str(self.url)), f"cannot connect to the addresses of {self.host}"
            ) from None


async def check_target(url: str, policy: FetchPolicy, resolver: Resolver | None = None) -> CheckedTarget:
    """Rules 1 and 2 of this module for ``url`` (the policy's allow-list applies); FetchError when
    refused. Redirects are the caller's to refuse or check."""
    try:
        try:
            checked = _checked_url(httpx.URL(url))
        except httpx.InvalidURL:
            raise _Refused("invalid URL") from None
        host = _normalize_host(checked.raw_host.decode("ascii"))
        port = checked.port or (443 if checked.scheme == "https" else 80)
        addresses, literal = await _addresses(host, port, resolver or system_resolver)
        allowed = host in policy.allow_hosts
        for addr in addresses:
            why = _why_refused(addr)
            if why is not None and (not allowed or addr in _METADATA):
                raise _Refused(f"address {addr} {why}")
    except _Refused as exc:
        raise FetchError(_shown(url), exc.reason) from None
    return CheckedTarget(checked, host, tuple(addresses), literal)


class ImageFetcher:
    """Downloads input images under a :class:`FetchPolicy`. Use as ``async with`` or call ``aclose``.

    ``resolver`` and ``transport`` are the test seams. An injected transport is not closed here, and
    should not pool connections across host names (connections are keyed by IP, and TLS checks the
    name only when a connection opens); the default one keeps no idle connections.
    """

    def __init__(
        self,
        policy: FetchPolicy,
        resolver: Resolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.policy = policy
        self._resolve: Resolver = resolver or system_resolver
        self._owns_transport = transport is None
        self._transport: httpx.AsyncBaseTransport = transport or httpx.AsyncHTTPTransport(
            verify=ssl_context(), limits=httpx.Limits(max_keepalive_connections=0), retries=0
        )

    async def __aenter__(self) -> ImageFetcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_transport:
            await self._transport.aclose()

    async def fetch(self, url: str) -> InputImage:
        """Download ``url`` and prove it is an image, or raise :class:`FetchError`."""
        try:
            async with asyncio.timeout(self.policy.timeout_s):
                data = await self._download(url)
        except TimeoutError:
            raise FetchError(_shown(url), "timed out") from None
        except _Refused as exc:
            raise FetchError(_shown(url), exc.reason) from None
        try:  # decodes a frame: off the event loop, within the process's decode budget
            info = await probe_image_async(data, self.policy.max_pixels)
        except ValueError as exc:
            raise FetchError(_shown(url), f"not an image: {exc}") from None
        return InputImage(data, info.mime_type, info.width, info.height, source_url=url)

    async def fetch_all(self, urls: Sequence[str]) -> tuple[InputImage, ...]:
        """Fetch all ``urls`` at once; results in the same order. The first failure is raised."""
        tasks = [asyncio.ensure_future(self.fetch(url)) for url in urls]
        try:
            return tuple(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _download(self, url: str) -> bytes:
        try:
            current = _checked_url(httpx.URL(url))
        except httpx.InvalidURL:
            raise _Refused("invalid URL") from None
        for hop in range(self.policy.max_redirects + 1):
            try:
                result = await self._get(current)
            except _Refused as exc:
                if hop:
                    exc.reason = f"{exc.reason} (after redirect to {current.host})"
                raise
            if isinstance(result, bytes):
                return result
            try:
                current = _checked_url(result)
            except _Refused as exc:
                exc.reason = f"redirect refused: {exc.reason}"
                raise
        raise _Refused("too many redirects")

    async def _get(self, url: httpx.URL) -> bytes | httpx.URL:
        """One hop: the body, or where a redirect points (not yet checked)."""
        failure: httpx.TransportError | None = None
        for request in await self._pinned_requests(url):
            try:
                response = await self._transport.handle_async_request(request)
                break
            except httpx.ConnectError as exc:  # the next checked address, if there is one
                failure = exc
            except httpx.TransportError as exc:
                raise _Refused(_transport_reason(exc)) from None
        else:
            raise _Refused(_transport_reason(failure) if failure else "connection failed")
        try:
            status = response.status_code
            if status in _REDIRECTS:
                location = response.headers.get("location")
                if not location:
                    raise _Refused(f"HTTP {status} without a Location")
                try:
                    return url.join(location)
                except httpx.InvalidURL:
                    raise _Refused("invalid redirect URL") from None
            if not 200 <= status < 300:
                raise _Refused(f"HTTP {status}")
            return await self._read_body(response)
        except httpx.TransportError as exc:
            raise _Refused(_transport_reason(exc)) from None
        finally:
            await response.aclose()

    async def _pinned_requests(self, url: httpx.URL) -> list[httpx.Request]:
        """Resolve once, check every address, and aim one request at each, in the resolver's order."""
        host = _normalize_host(url.raw_host.decode("ascii"))
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses, literal = await self._addresses(host, port)
        allowed = host in self.policy.allow_hosts
        for addr in addresses:
            why = _why_refused(addr)
            if why is not None and (not allowed or addr in _METADATA):
                raise _Refused(f"address {addr} {why}")
        extensions: dict[str, Any] = {"timeout": httpx.Timeout(self.policy.timeout_s).as_dict()}
        if url.scheme == "https" and not literal:
            extensions["sni_hostname"] = host
        headers = {
            "Host": url.netloc.decode("ascii"),
            "Accept": "image/*",
            "Accept-Encoding": "identity",
            "User-Agent": f"nanogen/{__version__}",
        }
        try:
            return [
                httpx.Request("GET", url.copy_with(host=str(addr)), headers=headers, extensions=extensions)
                for addr in dict.fromkeys(addresses)
            ]
        except httpx.InvalidURL:  # e.g. a scoped IPv6 address (fe80::1%eth0) on an allow-listed host
            raise _Refused(f"cannot connect to the addresses of {host}") from None

    async def _addresses(self, host: str, port: int) -> tuple[list[IPAddress], bool]:
        return await _addresses(host, port, self._resolve)

    async def _read_body(self, response: httpx.Response) -> bytes:
        limit = self.policy.max_bytes
        too_big = _Refused(f"larger than {_size(limit)}")
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise _Refused(f"unsupported Content-Encoding {encoding[:32]}")
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_big
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.aiter_raw():
            total += len(chunk)
            if total > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)
