"""SafeFetcher against real loopback servers and injected resolvers: what it refuses, and what it admits."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import time
import zlib
from contextlib import contextmanager

import httpx
import pytest

from llmi.config import FetchSettings, ImageLimits
from llmi.errors import ConfigError, ToolError, TransientToolError, UnsafeURLError
from llmi.fetch import AllowList, SafeFetcher, check_image_bytes, unsafe_reason
from tests.helpers import dispatch, loopback_server, make_jpeg, make_png, send

LIMITS = ImageLimits()  # the defaults: at least 400x400
PNG = make_png(500, 450)


def png_claiming(width: int, height: int) -> bytes:
    """A ~100-byte, well-formed PNG whose header claims ``width``×``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 2)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def static_resolver(table: dict[str, list[str]], calls: list[str] | None = None):
    async def resolve(host: str) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(table[host])

    return resolve


def never_transport():
    """A transport that fails the test if the fetcher ever tries to connect."""

    def handler(request: httpx.Request) -> httpx.Response:  # pragma: no cover - must not run
        raise AssertionError(f"fetcher connected to {request.url}")

    return httpx.MockTransport(handler)


class Hits:
    def __init__(self) -> None:
        self.paths: list[str] = []
        self.hosts: list[str] = []

    def record(self, req) -> None:
        self.paths.append(req.path)
        self.hosts.append(req.headers.get("Host", ""))


class Server:
    """One loopback server for the whole module (starting and stopping one costs ~0.5 s); each test sets
    its own ``routes``: path -> (status, body, content_type, headers) or a callable(req, handler)."""

    def __init__(self, base: str):
        self.base = base
        self.port = int(base.rsplit(":", 1)[1])
        self.routes: dict = {}
        self.hits = Hits()

    def handle(self, req, h) -> None:
        self.hits.record(req)
        dispatch(self.routes, req.path.split("?")[0], req, h)


@pytest.fixture(scope="module")
def _server():
    holder: list[Server] = []
    with loopback_server(lambda req, h: holder[0].handle(req, h)) as base:
        holder.append(Server(base))
        yield holder[0]


@contextmanager
def image_server(srv: Server, routes: dict, hits: Hits):
    srv.routes = routes
    srv.hits = hits
    yield srv.base


@pytest.fixture
def srv(_server):
    _server.routes = {}
    _server.hits = Hits()
    return _server


# -- address classification ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "addr,needle",
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("192.168.1.20", "private"),
        ("172.16.5.4", "private"),
        ("169.254.169.254", "metadata"),
        ("169.254.10.10", "link-local"),
        ("100.100.100.200", "metadata"),
        ("100.64.1.1", "non-public"),
        ("224.0.0.251", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("255.255.255.255", "private"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("fc00::1", "private"),
        ("fd00:ec2::254", "metadata"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 of 169.254.169.254
        ("2002:0a00:0001::1", "private"),  # 6to4 of 10.0.0.1
        ("::", "unspecified"),
    ],
)
def test_internal_addresses_are_unsafe(addr, needle):
    reason = unsafe_reason(ipaddress.ip_address(addr))
    assert reason is not None and needle in reason


@pytest.mark.parametrize("addr", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e"])
def test_public_addresses_are_safe(addr):
    assert unsafe_reason(ipaddress.ip_address(addr)) is None


def test_allow_list_parsing_and_matching():
    allow = AllowList.parse(["qwen.internal", "10.1.2.3:8000", "192.168.0.0/16", "[::1]:9000", "169.254.0.0/16"])
    ip = ipaddress.ip_address
    assert allow.admits("qwen.internal", 80, ip("10.9.9.9"))
    assert allow.admits("whatever", 8000, ip("10.1.2.3"))
    assert not allow.admits("whatever", 8001, ip("10.1.2.3"))
    assert allow.admits("x", 443, ip("192.168.44.1"))
    assert allow.admits("x", 9000, ip("::1"))
    assert not allow.admits("x", 9001, ip("::1"))
    assert allow.admits("x", 80, ip("169.254.1.1"))
    # A broad range never admits a cloud metadata address; naming it exactly does.
    assert not allow.admits("x", 80, ip("169.254.169.254"))
    assert AllowList.parse(["169.254.169.254"]).admits("x", 80, ip("169.254.169.254"))
    with pytest.raises(ConfigError):
        AllowList.parse(["10.0.0.0/99"])
    with pytest.raises(ConfigError):
        AllowList.parse(["host:notaport"])


# -- refusals before any connection ----------------------------------------------------------------


async def test_loopback_is_refused_without_the_allow_list(srv):
    hits = Hits()
    with image_server(srv, {"/a.png": (200, PNG, "image/png", None)}, hits) as base:
        async with SafeFetcher(FetchSettings()) as f:
            with pytest.raises(UnsafeURLError) as ei:
                await f.fetch_image(f"{base}/a.png", limits=LIMITS)
    assert ei.value.kind == "unsafe_url"
    assert "loopback" in str(ei.value) and "[fetch] allow" in str(ei.value)
    assert hits.paths == []  # refused before connecting


async def test_allow_list_admits_the_operators_own_server(srv):
    hits = Hits()
    with image_server(srv, {"/a.png": (200, PNG, "image/png", None)}, hits) as base:
        async with SafeFetcher(FetchSettings(allow=["127.0.0.1"])) as f:
            image, final = await f.fetch_image(f"{base}/a.png", limits=LIMITS)
    assert (image.width, image.height, image.mime) == (500, 450, "image/png")
    assert final == f"{base}/a.png"
    assert hits.paths == ["/a.png"]


async def test_allow_entry_with_port_admits_only_that_port(srv):
    with image_server(srv, {"/a.png": (200, PNG, "image/png", None)}, Hits()) as base:
        port = int(base.rsplit(":", 1)[1])
        async with SafeFetcher(FetchSettings(allow=[f"127.0.0.1:{port + 1}"])) as f:
            with pytest.raises(UnsafeURLError):
                await f.fetch_image(f"{base}/a.png", limits=LIMITS)
        async with SafeFetcher(FetchSettings(allow=[f"127.0.0.1:{port}"])) as f:
            image, _ = await f.fetch_image(f"{base}/a.png", limits=LIMITS)
            assert image.width == 500


async def test_hostname_resolving_to_private_address_is_refused():
    resolver = static_resolver({"evil.test": ["10.0.0.1"]})
    async with SafeFetcher(FetchSettings(), resolver=resolver, transport=never_transport()) as f:
        with pytest.raises(UnsafeURLError) as ei:
            await f.fetch_image("http://evil.test/cat.png", limits=LIMITS)
    assert "evil.test resolves to 10.0.0.1" in str(ei.value)
    assert ei.value.kind == "unsafe_url"


async def test_any_internal_address_among_several_is_refused():
    resolver = static_resolver({"mixed.test": ["93.184.216.34", "127.0.0.1"]})
    async with SafeFetcher(FetchSettings(), resolver=resolver, transport=never_transport()) as f:
        with pytest.raises(UnsafeURLError, match="127.0.0.1"):
            await f.fetch_image("https://mixed.test/cat.png", limits=LIMITS)


@pytest.mark.parametrize(
    "url",
    ["http://[::1]/a.png", "http://[::ffff:127.0.0.1]/a.png", "http://169.254.169.254/latest/meta-data/",
     "http://0.0.0.0:8080/a.png", "http://[fd00:ec2::254]/"],
)
async def test_ip_literals_are_checked(url):
    async with SafeFetcher(FetchSettings(), transport=never_transport()) as f:
        with pytest.raises(UnsafeURLError) as ei:
            await f.fetch_image(url, limits=LIMITS)
    assert ei.value.kind == "unsafe_url"


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.png", "data:image/png;base64,AAAA", "javascript:alert(1)",
            "/relative/a.png", "gopher://x/"],
)
async def test_only_http_and_https(url):
    async with SafeFetcher(FetchSettings(), transport=never_transport()) as f:
        with pytest.raises(UnsafeURLError) as ei:
            await f.fetch_image(url, limits=LIMITS)
    assert ei.value.kind == "bad_scheme"


async def test_unresolvable_host_is_a_transient_dns_error():
    async with SafeFetcher(FetchSettings(), resolver=static_resolver({}), transport=never_transport()) as f:
        with pytest.raises(TransientToolError) as ei:
            await f.fetch_image("https://nowhere.test/a.png", limits=LIMITS)
    assert ei.value.kind == "dns_error"


# -- pinning: the connection goes to the checked address -------------------------------------------


async def test_connection_is_pinned_to_the_checked_address():
    """DNS rebinding: a second lookup would say 127.0.0.1, but the fetcher only looks up once per hop
    and connects to the address it checked, sending the name as Host header and TLS SNI."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"], ["127.0.0.1"]])
    calls: list[str] = []

    async def rebinding(host: str) -> list[str]:
        calls.append(host)
        return next(answers)

    seen: list[tuple[str, str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers["host"], request.extensions.get("sni_hostname")))
        return httpx.Response(200, content=PNG, headers={"Content-Type": "image/png"})

    async with SafeFetcher(FetchSettings(), resolver=rebinding, transport=httpx.MockTransport(handler)) as f:
        image, final = await f.fetch_image("https://rebind.test:8443/p/cat.png?s=1", limits=LIMITS)
    assert calls == ["rebind.test"]
    assert seen == [("https://93.184.216.34:8443/p/cat.png?s=1", "rebind.test:8443", "rebind.test")]
    assert final == "https://rebind.test:8443/p/cat.png?s=1"
    assert image.width == 500


async def test_host_header_reaches_a_real_server_through_the_pinned_address(srv):
    hits = Hits()
    with image_server(srv, {"/a.png": (200, PNG, "image/png", None)}, hits) as base:
        port = base.rsplit(":", 1)[1]
        resolver = static_resolver({"assets.test": ["127.0.0.1"]})
        async with SafeFetcher(FetchSettings(allow=["assets.test"]), resolver=resolver) as f:
            await f.fetch_image(f"http://assets.test:{port}/a.png", limits=LIMITS)
    assert hits.hosts == [f"assets.test:{port}"]


# -- redirects -----------------------------------------------------------------------------------


async def test_redirect_to_loopback_is_refused(srv):
    hits = Hits()
    routes = {
        "/start": (302, b"", "text/plain", {"Location": f"http://127.0.0.1:{srv.port}/secret.png"}),
        "/secret.png": (200, PNG, "image/png", None),
    }
    with image_server(srv, routes, hits) as base:
        port = base.rsplit(":", 1)[1]
        resolver = static_resolver({"assets.test": ["127.0.0.1"]})
        async with SafeFetcher(FetchSettings(allow=["assets.test"]), resolver=resolver) as f:
            with pytest.raises(UnsafeURLError) as ei:
                await f.fetch_image(f"http://assets.test:{port}/start", limits=LIMITS)
    assert "127.0.0.1" in str(ei.value) and "loopback" in str(ei.value)
    assert hits.paths == ["/start"]  # the redirect target was never contacted


async def test_redirect_to_metadata_service_is_refused(srv):
    routes = {"/start": (301, b"", "text/plain", {"Location": "http://169.254.169.254/latest/meta-data/iam"})}
    with image_server(srv, routes, Hits()) as base:
        async with SafeFetcher(FetchSettings(allow=["127.0.0.1"])) as f:
            with pytest.raises(UnsafeURLError, match="metadata"):
                await f.fetch_image(f"{base}/start", limits=LIMITS)


async def test_redirect_to_a_name_resolving_internally_is_refused(srv):
    routes = {"/start": (307, b"", "text/plain", {"Location": "http://evil.test/x.png"})}
    resolver = static_resolver({"evil.test": ["10.0.0.1"]})
    with image_server(srv, routes, Hits()) as base:
        async with SafeFetcher(FetchSettings(allow=["127.0.0.1"]), resolver=resolver) as f:
            with pytest.raises(UnsafeURLError, match="10.0.0.1"):
                await f.fetch_image(f"{base}/start", limits=LIMITS)


async def test_redirect_to_file_scheme_is_refused(srv):
    routes = {"/start": (302, b"", "text/plain", {"Location": "file:///etc/passwd"})}
    with image_server(srv, routes, Hits()) as base:
        async with SafeFetcher(FetchSettings(allow=["127.0.0.1"])) as f:
            with pytest.raises(UnsafeURLError) as ei:
                await f.fetch_image(f"{base}/start", limits=LIMITS)
    assert ei.value.kind == "bad_scheme"


async def test_relative_redirects_are_followed_and_reported(srv):
    hits = Hits()
    routes = {
        "/a": (301, b"", "text/plain", {"Location": "/b"}),
        "/b": (303, b"", "text/plain", {"Location": "c.png"}),
        "/c.png": (200, PNG, "image/png", None),
    }
    with image_server(srv, routes, hits) as base:
        async with SafeFetcher(FetchSettings(allow=["127.0.0.1"])) as f:
            image, final = await f.fetch_image(f"{base}/a", limits=LIMITS)
    assert final == f"{base}/c.png"
    assert hits.paths == ["/a", "/b", "/c.png"]
    assert image.height == 450


async def test_redirect_loops_stop(srv):
    routes = {"/loop": (302, b"", "text/plain", {"Location": "/loop"})}
    hits = Hits()
    with image_server(srv, routes, hits) as base:
        async with SafeFetcher(FetchSettings(allow=["127.0.0.1"], max_redirects=3)) as f:
            with pytest.raises(ToolError) as ei:
                await f.fetch_image(f"{base}/loop", limits=LIMITS)
    assert ei.value.kind == "too_many_redirects"
    assert len(hits.paths) == 4


# -- HTTP failures ---------------------------------------------------------------------------------


async def test_429_with_retry_after_is_transient(srv):
    routes = {"/a.png": (429, b"slow down", "text/plain", {"Retry-After": "7"})}
    with image_server(srv, routes, Hits()) as base:
        async with SafeFetcher(FetchSettings(allow=["127.0.0.1"])) as f:
            with pytest.raises(TransientToolError) as ei:
                await f.fetch_image(f"{base}/a.png", limits=LIMITS)
    assert ei.value.kind == "rate_limited" and ei.value.retry_after == 7.0


async def test_503_and_500_are_transient_404_is_not(srv):
    routes = {
        "/busy": (503, b"", "text/plain", {"Retry-After": "2"}),
        "/boom": (500, b"<html>oops</html>", "text/html", None),
        "/gone": (404, b"<html>missing</html>", "text/html", None),
    }
    with image_server(srv, routes, Hits()) as base:
        async with SafeFetcher(FetchSettings(allow=["127.0.0.1"])) as f:
            with pytest.raises(TransientToolError) as busy:
                await f.fetch_image(f"{base}/busy", limits=LIMITS)
            with pytest.raises(TransientToolError) as boom:
                await f.fetch_image(f"{base}/boom", limits=LIMITS)
            with pytest.raises(ToolError) as gone:
                await f.fetch_image(f"{base}/gone", limits=LIMITS)
    assert busy.value.retry_after == 2.0 and busy.value.kind == "unavailable"
    assert boom.value.kind == "server_error"
    assert gone.value.kind == "http_error" and not isinstance(gone.value, TransientToolError)


async def test_slow_server_times_out(srv):
    def slow(req, h):
        time.sleep(1.5)
        send(h, 200, PNG, "image/png")

    with image_server(srv, {"/slow.png": slow}, Hits()) as base:
        async with SafeFetcher(FetchSettings(allow=["127.0.0.1"], timeout_s=0.3)) as f:
            t0 = time.monotonic()
            with pytest.raises(TransientToolError) as ei:
                await f.fetch_image(f"{base}/slow.png", limits=LIMITS)
            elapsed = time.monotonic() - t0
    assert ei.value.kind == "timeout"
    assert elapsed < 1.4  # gave up at the limit rather than waiting for the server


async def test_connection_refused_is_transient():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    async with SafeFetcher(FetchSettings(allow=["127.0.0.1"])) as f:
        with pytest.raises(TransientToolError) as ei:
            await f.fetch_image(f"http://127.0.0.1:{port}/a.png", limits=LIMITS)
    assert ei.value.kind == "connection_error"


# -- content checks --------------------------------------------------------------------------------


async def test_html_instead_of_an_image(srv):
    page = b"<!doctype html><html><body>Hotlinking not allowed</body></html>"
    routes = {"/page": (200, page, "text/html; charset=utf-8", None), "/lying.png": (200, page, "image/png", None)}
    with image_server(srv, routes, Hits()) as base:
        async with SafeFetcher(FetchSettings(allow=["127.0.0.1"])) as f:
            with pytest.raises(UnsafeURLError) as by_type:
                await f.fetch_image(f"{base}/page", limits=LIMITS)
            with pytest.raises(ToolError) as by_magic:
                await f.fetch_image(f"{base}/lying.png", limits=LIMITS)
    assert by_type.value.kind == "bad_content_type" and "text/html" in str(by_type.value)
    assert by_magic.value.kind == "invalid_image" and "doctype" in str(by_magic.value)


async def test_svg_is_refused(srv):
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="500" height="500"></svg>'
    with image_server(srv, {"/a.svg": (200, svg, "image/svg+xml", None)}, Hits()) as base:
        async with SafeFetcher(FetchSettings(allow=["127.0.0.1"])) as f:
            with pytest.raises(UnsafeURLError) as ei:
                await f.fetch_image(f"{base}/a.svg", limits=LIMITS)
    assert ei.value.kind == "bad_content_type"


async def test_truncated_png_is_invalid(srv):
    with image_server(srv, {"/t.png": (200, PNG[: len(PNG) // 2], "image/png", None)}, Hits()) as base:
        async with SafeFetcher(FetchSettings(allow=["127.0.0.1"])) as f:
            with pytest.raises(ToolError) as ei:
                await f.fetch_image(f"{base}/t.png", limits=LIMITS)
    assert ei.value.kind == "invalid_image"


@pytest.mark.parametrize("side,shown", [(20000, "400000000"), (9000, "9000x9000")])
async def test_decompression_bomb_is_refused_from_its_header(srv, monkeypatch, side, shown):
    bomb = png_claiming(side, side)
    assert len(bomb) < 1000
    from PIL import Image

    def no_decoding(self, *a, **k):  # pragma: no cover - must not run
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    with image_server(srv, {"/bomb.png": (200, bomb, "image/png", None)}, Hits()) as base:
        async with SafeFetcher(FetchSettings(allow=["127.0.0.1"])) as f:
            with pytest.raises(ToolError) as ei:
                await f.fetch_image(f"{base}/bomb.png", limits=LIMITS)
    assert ei.value.kind == "image_too_large" and shown in str(ei.value) and "not decoded" in str(ei.value)


def test_dimension_limits_from_config():
    with pytest.raises(ToolError) as small:
        check_image_bytes(make_png(100, 100), LIMITS)
    assert small.value.kind == "image_too_small"
    with pytest.raises(ToolError) as wide:
        check_image_bytes(make_png(900, 500), ImageLimits(max_width=800))
    assert wide.value.kind == "image_too_large"
    ok = check_image_bytes(make_jpeg(64, 64), ImageLimits(min_width=32, min_height=32))
    assert ok.mime == "image/jpeg" and ok.width == 64


async def test_declared_length_over_the_cap(srv):
    big = PNG + b"\x00" * 5000
    hits = Hits()
    with image_server(srv, {"/big.png": (200, big, "image/png", None)}, hits) as base:
        async with SafeFetcher(FetchSettings(allow=["127.0.0.1"], max_bytes=4000)) as f:
            with pytest.raises(UnsafeURLError) as ei:
                await f.fetch_image(f"{base}/big.png", limits=LIMITS)
    assert ei.value.kind == "too_large"


async def test_undeclared_length_is_cut_off_at_the_cap(srv):
    def endless(req, h):
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        try:
            h.wfile.write(PNG)
            for _ in range(200):  # 200 * 64 KiB: far more than the cap
                h.wfile.write(b"\x00" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass

    with image_server(srv, {"/stream.png": endless}, Hits()) as base:
        async with SafeFetcher(FetchSettings(allow=["127.0.0.1"], max_bytes=100_000)) as f:
            with pytest.raises(UnsafeURLError) as ei:
                await f.fetch_image(f"{base}/stream.png", limits=LIMITS)
    assert ei.value.kind == "too_large"


async def test_octet_stream_is_accepted_when_the_bytes_are_an_image(srv):
    with image_server(srv, {"/blob": (200, PNG, "application/octet-stream", None)}, Hits()) as base:
        async with SafeFetcher(FetchSettings(allow=["127.0.0.1"])) as f:
            image, _ = await f.fetch_image(f"{base}/blob", limits=LIMITS)
    assert image.mime == "image/png"


async def test_concurrent_fetches_share_one_fetcher(srv):
    with image_server(srv, {"/a.png": (200, PNG, "image/png", None)}, Hits()) as base:
        async with SafeFetcher(FetchSettings(allow=["127.0.0.1"])) as f:
            results = await asyncio.gather(*(f.fetch_image(f"{base}/a.png", limits=LIMITS) for _ in range(6)))
    assert all(img.width == 500 for img, _ in results)
