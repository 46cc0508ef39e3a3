"""Downloading images from URLs that llmi does not control (search results, model output).

Such a URL may point anywhere, including at the machine llmi runs on or at a cloud metadata service, so
:class:`SafeFetcher` treats every hop as hostile:

* only ``http`` and ``https``;
* the host is resolved by llmi itself and *every* address it resolves to must be public — loopback,
  private, link-local, multicast, reserved, shared (CGNAT) and cloud-metadata addresses are refused, for
  IPv4 and IPv6 alike, including IPv4 addresses smuggled inside IPv6 (mapped, 6to4, NAT64, Teredo);
* the connection then goes to the very address that was checked (the URL's host is replaced by the IP,
  the original name travels in the ``Host`` header and as TLS SNI, and the certificate is still verified
  against the name), so DNS cannot answer differently between the check and the connect;
* redirects are followed by hand, one hop at a time, and each hop is checked again;
* no proxies from the environment (a proxy would resolve names itself) and no cookies;
* a wall-clock limit for the whole fetch, a byte limit while streaming, a content-type check, a
  magic-byte check on the first bytes, and image dimensions read from the header before any full decode
  (a tiny PNG that claims 20000×20000 pixels is refused without decoding it).

Operators admit their own internal servers (a local image-generation server, an asset store) with
``[fetch] allow = [...]``: host names, ``host:port`` pairs, or CIDR ranges. Cloud-metadata addresses are
only admitted by naming them exactly, never by a wider range.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import logging
import socket
import warnings
import zlib
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Awaitable, Callable, Iterable

import httpx

from .config import FetchSettings, ImageLimits
from .errors import ConfigError, ToolError, TransientToolError, UnsafeURLError
from .images import ImageData, sniff_mime
from .tools.http import check_response

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: An async callable ``host -> [ip, ...]``; injectable so tests can make a name resolve anywhere.
Resolver = Callable[[str], Awaitable[list[str]]]

#: Addresses of instance-metadata services (AWS/GCP/Azure/OpenStack, AWS IPv6, ECS, Alibaba, Oracle).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "169.254.169.123", "fd00:ec2::254", "100.100.100.200",
              "192.0.0.192")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: Where IPv6 hides an IPv4 address in its low 32 bits besides the stdlib's mapped/6to4/Teredo: the
#: deprecated IPv4-compatible form (``::127.0.0.1``), SIIT's IPv4-translated form (``::ffff:0:a.b.c.d``)
#: and the well-known NAT64 prefix.
_LOW32_EMBEDDING = (_NAT64, ipaddress.ip_network("::/96"), ipaddress.ip_network("::ffff:0:0:0/96"))
#: Public unicast IPv6 lives in 2000::/3; everything else is loopback, link-local, ULA, multicast,
#: reserved or not yet allocated. Checked explicitly because the stdlib's ``is_global`` tables are
#: incomplete before Python 3.11.10/3.12.4 (e.g. they call ``::127.0.0.1`` and ``64:ff9b:1::/48`` global).
_IPV6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
#: Special-purpose ranges (IANA registries) that are never a public web server, whatever Python says.
_NOT_PUBLIC = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20", "5f00::/16", "fc00::/7",
        "fe80::/10", "fec0::/10", "ff00::/8",
    )
)
_REDIRECTS = (301, 302, 303, 307, 308)
_OK_CONTENT_TYPES = ("application/octet-stream", "binary/octet-stream")


def unsafe_reason(addr: IPAddress) -> str | None:
    """Why ``addr`` must not be contacted, or None if it is an ordinary public address."""
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:  # fe80::1%eth0: a zone only means something for link-local addresses
            addr = ipaddress.IPv6Address(str(addr).split("%", 1)[0])
        embedded = addr.ipv4_mapped or addr.sixtofour
        if embedded is None and any(addr in net for net in _LOW32_EMBEDDING) and int(addr) > 1:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is None and addr.teredo:
            embedded = addr.teredo[1]
        if embedded is not None:
            inner = unsafe_reason(embedded)
            if inner:
                return f"{inner} ({embedded} embedded in {addr})"
    if addr in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if addr.is_loopback:
        return "a loopback address"
    if addr.is_unspecified:
        return "an unspecified address"
    if addr.is_multicast:
        return "a multicast address"
    if addr.is_link_local:
        return "a link-local address"
    if addr.is_private:
        return "a private address"
    if isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local:
        return "a site-local address"
    if not addr.is_global or addr.is_reserved or any(addr in net for net in _NOT_PUBLIC):
        return "a non-public (reserved or shared) address"
    if isinstance(addr, ipaddress.IPv6Address) and addr not in _IPV6_GLOBAL_UNICAST:
        return "a non-public (reserved or unallocated) address"
    return None


def numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a host written in a legacy numeric notation stands for, or None for a name.

    ``inet_aton`` — and so the system resolver and every browser (WHATWG URL "IPv4 parser") — reads
    ``2130706433``, ``0x7f.1``, ``0177.0.0.1`` and ``127.1`` as 127.0.0.1. The fetcher treats such a
    host as the literal it is, instead of leaving its meaning to whichever resolver is plugged in.
    Raises :class:`UnsafeURLError` for a host that looks numeric but is not a valid address
    (``1.2.3.999``), which a resolver might otherwise interpret in its own way.
    """
    parts = host.split(".")
    if parts and parts[-1] == "":
        parts.pop()
    if not parts or not _looks_numeric(parts[-1]):
        return None
    try:
        if len(parts) > 4:
            raise ValueError("too many parts")
        nums = [_ipv4_part(p) for p in parts]
        last_bits = 8 * (5 - len(nums))
        if any(n > 255 for n in nums[:-1]) or nums[-1] >= 1 << last_bits:
            raise ValueError("part out of range")
        value = nums[-1]
        for i, n in enumerate(nums[:-1]):
            value |= n << (8 * (3 - i))
        return ipaddress.IPv4Address(value)
    except ValueError as exc:
        raise UnsafeURLError(f"host {host!r} looks like an IPv4 address but is not one ({exc})",
                             kind="unsafe_url") from exc


def _looks_numeric(part: str) -> bool:
    if part.isdigit() and part.isascii():
        return True
    return part[:2].lower() == "0x" and all(c in "0123456789abcdefABCDEF" for c in part[2:])


def _ipv4_part(part: str) -> int:
    if not part or not part.isascii():
        raise ValueError(f"bad part {part!r}")
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part[0] == "0":
        return int(part[1:], 8)
    return int(part, 10)


@dataclass(frozen=True)
class AllowList:
    """The operator's explicit exceptions: host names, ``host:port`` pairs and CIDR ranges."""

    hosts: frozenset[str] = frozenset()
    host_ports: frozenset[tuple[str, int]] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> "AllowList":
        hosts: set[str] = set()
        host_ports: set[tuple[str, int]] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            try:
                if "/" in entry:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                    continue
                host, port = entry, None
                if entry.startswith("["):  # [v6] or [v6]:port
                    inside, _, rest = entry[1:].partition("]")
                    host = inside
                    if rest.startswith(":"):
                        port = int(rest[1:])
                elif entry.count(":") == 1:
                    host, _, p = entry.partition(":")
                    port = int(p)
                try:
                    ip = ipaddress.ip_address(host)
                except ValueError:
                    ip = None
                if port is not None:
                    host_ports.add((str(ip) if ip else host, port))
                elif ip is not None:
                    networks.append(ipaddress.ip_network(ip))
                else:
                    hosts.add(host)
            except ValueError as exc:
                raise ConfigError(f"[fetch] allow entry {raw!r} is not a host, host:port or CIDR: {exc}") from exc
        return cls(frozenset(hosts), frozenset(host_ports), tuple(networks))

    def admits(self, host: str, port: int, addr: IPAddress) -> bool:
        if host in self.hosts or (host, port) in self.host_ports or (str(addr), port) in self.host_ports:
            return True
        for net in self.networks:
            if addr in net:
                # A metadata address needs to be named exactly; a broad range never admits it.
                if addr in METADATA_ADDRESSES and net.num_addresses > 1:
                    continue
                return True
        return False


async def system_resolver(host: str) -> list[str]:
    """Resolve ``host`` with the system resolver (without blocking the event loop)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        ip = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        if ip not in seen:
            seen.append(ip)
    return seen


def _short(url: object, limit: int = 160) -> str:
    """A URL for messages and logs: without its query string or fragment (signed image URLs carry
    short-lived credentials there, e.g. ``?sig=``/``X-Amz-Signature=``) and cut to ``limit`` characters."""
    s = str(url)
    for sep in ("?", "#"):
        head, found, _ = s.partition(sep)
        if found:
            s = head + sep + "…"
    return s if len(s) <= limit else s[:limit] + "…"


def check_image_bytes(data: bytes, limits: ImageLimits) -> ImageData:
    """Validate downloaded bytes against ``limits``: dimensions from the header first, then a full decode.

    Reading the header is cheap whatever the image claims; only an image whose size is acceptable is
    decoded, so a decompression bomb costs nothing but its (small) download.
    """
    from PIL import Image

    if sniff_mime(data) is None:
        head = data[:40].decode("latin-1", "replace").strip()
        raise ToolError(f"not an image (starts with {head!r})", kind="invalid_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Image.DecompressionBombError as exc:
        raise ToolError(
            f"image header claims too many pixels ({exc}); not decoded (limit {limits.max_pixels} pixels)",
            kind="image_too_large",
        ) from exc
    except Exception as exc:  # PIL raises a zoo of types for garbage headers
        raise ToolError(f"image header does not decode: {exc}", kind="invalid_image") from exc
    if width * height > limits.max_pixels or width > limits.max_width or height > limits.max_height:
        raise ToolError(
            f"image is {width}x{height}, above the limit of {limits.max_width}x{limits.max_height} / "
            f"{limits.max_pixels} pixels (possible decompression bomb); not decoded",
            kind="image_too_large",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return ImageData.from_bytes(
            data,
            max_pixels=limits.max_pixels,
            min_size=(limits.min_width, limits.min_height),
            max_size=(limits.max_width, limits.max_height),
        )


class SafeFetcher:
    """Fetches images from untrusted URLs; see the module docstring for what it refuses and why.

    One instance is shared by all backends of an engine (it owns an ``httpx.AsyncClient``); close it with
    :meth:`aclose`. ``resolver`` and ``transport`` are injectable for tests and embedding.
    """

    def __init__(
        self,
        settings: FetchSettings | None = None,
        *,
        resolver: Resolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.settings = settings or FetchSettings()
        self.allow = AllowList.parse(self.settings.allow)
        self._resolve = resolver or system_resolver
        self._client = httpx.AsyncClient(
            transport=transport,
            trust_env=False,  # an environment proxy would resolve names itself, outside our checks
            follow_redirects=False,
            timeout=httpx.Timeout(self.settings.timeout_s),
            # Connections are keyed by IP here; never reuse one for a different host name (SNI).
            limits=httpx.Limits(max_keepalive_connections=0),
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            # Images are compressed already; asking for no content coding keeps a gzip bomb away from
            # honest servers, and _read_capped decodes (bounded) what others send anyway.
            headers={"User-Agent": self.settings.user_agent, "Accept": "image/*", "Accept-Encoding": "identity"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> "SafeFetcher":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- public API ---------------------------------------------------------------------------------
    async def fetch_image(self, url: str, *, limits: ImageLimits | None = None) -> tuple[ImageData, str]:
        """Download and validate the image at ``url``; returns it and the final URL after redirects."""
        limits = limits or ImageLimits()
        try:
            data, final_url = await asyncio.wait_for(self._download(url), self.settings.timeout_s)
        except asyncio.TimeoutError as exc:
            raise TransientToolError(
                f"fetching {_short(url)} took longer than {self.settings.timeout_s:g}s", kind="timeout"
            ) from exc
        image = await asyncio.to_thread(check_image_bytes, data, limits)
        return image, final_url

    async def check_url(self, url: str) -> list[str]:
        """Check ``url`` as :meth:`fetch_image` would before connecting; returns the admitted addresses."""
        return await self._admitted_addresses(self._parse(url))

    # -- steps --------------------------------------------------------------------------------------
    def _parse(self, url: str | httpx.URL) -> httpx.URL:
        try:
            parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise UnsafeURLError(f"not a valid URL: {_short(url)!r}", kind="bad_scheme") from exc
        if parsed.scheme not in ("http", "https"):
            raise UnsafeURLError(
                f"only http(s) URLs are fetched, not {parsed.scheme or 'a relative URL'!r}: {_short(url)}",
                kind="bad_scheme",
            )
        if not parsed.host:
            raise UnsafeURLError(f"URL has no host: {_short(url)}", kind="unsafe_url")
        if parsed.userinfo:
            raise UnsafeURLError("URLs with credentials are not fetched", kind="unsafe_url")
        return parsed

    @staticmethod
    def _port(url: httpx.URL) -> int:
        return url.port or (443 if url.scheme == "https" else 80)

    async def _admitted_addresses(self, url: httpx.URL) -> list[str]:
        host = url.raw_host.decode("ascii").lower().rstrip(".")
        port = self._port(url)
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = numeric_ipv4(host)
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                addresses = await self._resolve(host)
            except (OSError, UnicodeError) as exc:
                raise TransientToolError(f"cannot resolve {host}: {exc}", kind="dns_error") from exc
            if not addresses:
                raise TransientToolError(f"{host} resolves to no address", kind="dns_error")
        checked: list[str] = []
        for a in addresses:
            try:
                addr = ipaddress.ip_address(a)
            except ValueError as exc:
                raise UnsafeURLError(f"{host} resolved to something that is not an IP: {a!r}") from exc
            reason = unsafe_reason(addr)
            if reason and not self.allow.admits(host, port, addr):
                where = host if literal is not None else f"{host} resolves to {addr}, which"
                log.info("refused %s: %s", _short(url), reason)
                raise UnsafeURLError(
                    f"refused {_short(url)}: {where} is {reason} (add it to [fetch] allow if it is yours)",
                    kind="unsafe_url",
                )
            checked.append(str(addr))
        return checked

    async def _send(self, url: httpx.URL, addresses: list[str]) -> httpx.Response:
        """Open a streaming GET to ``url`` through one of the already-checked ``addresses``."""
        host = url.raw_host.decode("ascii")
        host_header = host if ":" not in host else f"[{host}]"
        if url.port is not None:
            host_header += f":{url.port}"
        extensions = {}
        is_literal = True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            is_literal = False
        if url.scheme == "https" and not is_literal:
            extensions["sni_hostname"] = host  # TLS sees (and verifies) the name, not the IP
        last_exc: Exception | None = None
        for ip in addresses[:3]:
            request = self._client.build_request(
                "GET", url.copy_with(host=ip), headers={"Host": host_header}, extensions=extensions
            )
            try:
                return await self._client.send(request, stream=True)
            except httpx.TimeoutException as exc:
                raise TransientToolError(f"{_short(url)} timed out ({type(exc).__name__})", kind="timeout") from exc
            except httpx.ConnectError as exc:
                last_exc = exc
                continue
            except httpx.TransportError as exc:
                raise TransientToolError(
                    f"fetching {_short(url)} failed: {type(exc).__name__}: {exc}", kind="connection_error"
                ) from exc
        raise TransientToolError(
            f"cannot connect to {host}: {last_exc}", kind="connection_error"
        ) from last_exc

    async def _download(self, url: str) -> tuple[bytes, str]:
        current = self._parse(url)
        for _hop in range(self.settings.max_redirects + 1):
            addresses = await self._admitted_addresses(current)
            resp = await self._send(current, addresses)
            try:
                if resp.status_code in _REDIRECTS:
                    location = resp.headers.get("location")
                    if not location:
                        raise ToolError(f"{_short(current)} redirects without a Location", kind="bad_response")
                    try:
                        nxt = current.join(location)
                    except (httpx.InvalidURL, ValueError) as exc:
                        raise UnsafeURLError(f"bad redirect target {location!r}", kind="bad_scheme") from exc
                    log.debug("redirect %s -> %s", _short(current), _short(nxt))
                    current = self._parse(nxt)
                    continue
                check_response(resp, f"image host {current.host}")
                self._check_content_type(resp, current)
                return await self._read_capped(resp, current), str(current)
            finally:
                await resp.aclose()
        raise ToolError(
            f"more than {self.settings.max_redirects} redirects starting at {_short(url)}", kind="too_many_redirects"
        )

    @staticmethod
    def _check_content_type(resp: httpx.Response, url: httpx.URL) -> None:
        ctype = resp.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if not ctype or ctype in _OK_CONTENT_TYPES:
            return
        if ctype.startswith("image/") and ctype != "image/svg+xml":
            return
        raise UnsafeURLError(
            f"{_short(url)} is {ctype!r}, not an image", kind="bad_content_type"
        )

    async def _read_capped(self, resp: httpx.Response, url: httpx.URL) -> bytes:
        """The body, decoded, never more than ``max_bytes`` of it — neither on the wire nor after decoding.

        httpx's own decoders inflate a whole network chunk at once (a 700-byte ``gzip, gzip`` body becomes
        hundreds of MB in one call), so the raw bytes are read here and inflated with an output bound.
        """
        cap = self.settings.max_bytes
        declared = resp.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise UnsafeURLError(
                f"{_short(url)} is {int(declared)} bytes, above the {cap}-byte limit", kind="too_large"
            )
        if resp.is_stream_consumed:  # an in-memory transport (tests, embedding) decoded it already
            decoder, chunks = _BoundedDecoder(None), _one(resp.content)
        else:
            decoder, chunks = _BoundedDecoder.for_response(resp, url), resp.aiter_raw()
        buf = bytearray()
        received = 0
        sniffed = False
        try:
            async for raw in chunks:
                received += len(raw)
                if received > cap:
                    raise UnsafeURLError(f"{_short(url)} is larger than the {cap}-byte limit", kind="too_large")
                buf += decoder.feed(raw, cap + 1 - len(buf))
                if len(buf) > cap:
                    raise UnsafeURLError(
                        f"{_short(url)} is larger than the {cap}-byte limit once decoded", kind="too_large"
                    )
                if not sniffed and len(buf) >= 16:
                    sniffed = True
                    if sniff_mime(bytes(buf[:16])) is None:  # stop early: not an image at all
                        head = bytes(buf[:40]).decode("latin-1", "replace").strip()
                        raise ToolError(f"{_short(url)} is not an image (starts with {head!r})", kind="invalid_image")
        except httpx.TimeoutException as exc:
            raise TransientToolError(f"{_short(url)} timed out while downloading", kind="timeout") from exc
        except httpx.TransportError as exc:
            raise TransientToolError(
                f"download of {_short(url)} broke off: {type(exc).__name__}", kind="connection_error"
            ) from exc
        return bytes(buf)


async def _one(data: bytes):
    yield data


class _BoundedDecoder:
    """Undoes one ``Content-Encoding`` (gzip or deflate), producing at most a given number of bytes per call.

    Stacked encodings (``gzip, gzip``) and the rest (br, zstd, compress) are refused: llmi asks for
    ``identity``, and only a hostile or broken server answers an image request with a layered encoding.
    """

    def __init__(self, encoding: str | None):
        self.encoding = encoding
        self._z = None
        if encoding in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._z = zlib.decompressobj(zlib.MAX_WBITS)
        self._first = True

    @classmethod
    def for_response(cls, resp: httpx.Response, url: httpx.URL) -> "_BoundedDecoder":
        raw = resp.headers.get_list("content-encoding", split_commas=True)
        codings = [c.strip().lower() for c in raw if c.strip() and c.strip().lower() != "identity"]
        if not codings:
            return cls(None)
        if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
            return cls(codings[0])
        raise ToolError(
            f"{_short(url)} is sent with Content-Encoding {', '.join(codings)[:60]!r}, which llmi does not "
            "decode for images (it asks for identity)",
            kind="bad_response",
        )

    def feed(self, data: bytes, limit: int) -> bytes:
        """Decode ``data`` into at most ``limit`` bytes. Input beyond that stays undecoded: the caller
        refuses the body as soon as it has ``limit`` bytes, so it is never needed."""
        if self._z is None:
            return data
        if self.encoding == "deflate" and self._first and len(data) >= 2:
            # "deflate" is officially zlib-wrapped; some servers send raw deflate instead.
            if (data[0] & 0x0F) != 8 or ((data[0] << 8) | data[1]) % 31:
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self._first = False
        try:
            return self._z.decompress(data, max(1, limit))
        except zlib.error as exc:
            raise ToolError(f"the {self.encoding} body does not decode: {exc}", kind="invalid_image") from exc
