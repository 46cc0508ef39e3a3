"""Red-team of SafeFetcher: SSRF by address notation, userinfo and redirects; resource exhaustion by
headers, slow bodies, lying lengths and compression bombs. Every attack must end in a typed refusal,
before any connection where the URL alone gives it away."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import socket
import time
import tracemalloc
import zlib

import httpx
import pytest

from llmi.config import FetchSettings, ImageLimits
from llmi.errors import ToolError, TransientToolError, UnsafeURLError
from llmi.fetch import SafeFetcher, numeric_ipv4, unsafe_reason
from tests.helpers import loopback_server, make_png, send

LIMITS = ImageLimits()
PNG = make_png(500, 450)


def resolver(table: dict[str, list[str]], calls: list[str]):
    async def resolve(host: str) -> list[str]:
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(table[host])

    return resolve


def recording_transport(handler):
    seen: list[httpx.Request] = []

    def wrapped(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return httpx.MockTransport(wrapped), seen


def never():
    def handler(request: httpx.Request) -> httpx.Response:  # pragma: no cover - must not run
        raise AssertionError(f"connected to {request.url}")

    return httpx.MockTransport(handler)


# -- SSRF: the URL alone is enough to refuse -----------------------------------------------------------------

HOSTILE_URLS = [
    "http://2130706433/",  # decimal 127.0.0.1
    "http://0x7f000001/",  # hex
    "http://017700000001/",  # octal
    "http://0177.0.0.1/",  # dotted octal (httpx refuses to parse it)
    "http://0x7f.1/",  # mixed hex, short form
    "http://127.1/",  # short form
    "http://127.0.1/",
    "http://0/",  # 0.0.0.0: Linux connects that to the local host
    "http://0.0.0.0:8000/",
    "http://3232235777/",  # 192.168.1.1
    "http://0xa9fea9fe/latest/meta-data/",  # 169.254.169.254
    "http://1.2.3.999/",  # numeric but invalid: refused, not handed to a resolver
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[0:0:0:0:0:ffff:127.0.0.1]/",
    "http://[::127.0.0.1]/",  # IPv4-compatible (deprecated)
    "http://[::ffff:0:7f00:1]/",  # SIIT IPv4-translated
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of the metadata address
    "http://[64:ff9b::7f00:1]/",
    "http://[64:ff9b:1::a9fe:a9fe]/",  # local-use NAT64 prefix
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",  # Teredo
    "http://[fe80::1%25eth0]/",  # link-local with a zone
    "http://[fec0::1]/",  # deprecated site-local
    "http://[fd00:ec2::254]/",
    "http://[100::1]/",  # discard prefix
    "http://example.com@127.0.0.1/",  # userinfo
    "http://127.0.0.1#@example.com/",
    "http://127.0.0.1%5C@example.com/",  # backslash as userinfo for httpx: refused anyway
    "http://localhost/",
    "http://localhost./",  # trailing dot
    "http://LOCALHOST:8080/",
    "http://LocalHost./x.png",
    "http://ＬＯＣＡＬＨＯＳＴ/",  # full-width: httpx refuses the IDNA
    "https://127.0.0.1:443/",
    "http://[::1]:6379/",  # a port of its own does not help
    "gopher://127.0.0.1:6379/_FLUSHALL",
    "file:///proc/self/environ",
    "dict://127.0.0.1:11211/stat",
]


@pytest.mark.parametrize("url", HOSTILE_URLS)
async def test_hostile_urls_are_refused_before_connecting(url):
    calls: list[str] = []
    table = {"localhost": ["127.0.0.1", "::1"], "example.com": ["93.184.216.34"]}
    async with SafeFetcher(FetchSettings(), resolver=resolver(table, calls), transport=never()) as f:
        with pytest.raises(UnsafeURLError) as ei:
            await f.fetch_image(url, limits=LIMITS)
    assert ei.value.kind in ("unsafe_url", "bad_scheme"), ei.value
    # Numeric hosts are read as the address they are; the resolver only ever sees real names.
    assert all(c == "localhost" for c in calls), calls


@pytest.mark.parametrize(
    "host,addr",
    [("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("127.1", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"),
     ("0x7f000001.", "127.0.0.1"), ("134744072", "8.8.8.8"), ("8.8.8.8", "8.8.8.8"), ("0", "0.0.0.0"),
     ("10.0x100", "10.0.1.0")],
)
def test_numeric_hosts_are_read_as_ipv4(host, addr):
    assert numeric_ipv4(host) == ipaddress.IPv4Address(addr)


@pytest.mark.parametrize("host", ["example.com", "1.example", "0x7f.example", "a.b.c.d", "xn--80ak6aa92e.com"])
def test_names_are_not_numeric(host):
    assert numeric_ipv4(host) is None


@pytest.mark.parametrize("host", ["1.2.3.999", "1.2.3.4.5", "08.0.0.1", "4294967296", "256.1", "1.2.3.0xfff"])
def test_invalid_numeric_hosts_are_refused(host):
    with pytest.raises(UnsafeURLError):
        numeric_ipv4(host)


@pytest.mark.parametrize(
    "addr",
    ["::7f00:1", "::ffff:0:7f00:1", "64:ff9b:1::a9fe:a9fe", "fec0::1", "5f00::1", "3fff::1", "4000::1",
     "192.88.99.1", "198.51.100.7", "203.0.113.9", "::a9fe:a9fe"],
)
def test_more_internal_addresses_are_unsafe(addr):
    assert unsafe_reason(ipaddress.ip_address(addr)) is not None


def test_embedded_metadata_address_is_named():
    assert "metadata" in unsafe_reason(ipaddress.ip_address("::a9fe:a9fe"))
    assert "metadata" in unsafe_reason(ipaddress.ip_address("::ffff:0:a9fe:a9fe"))


async def test_numeric_public_host_is_fetched_from_that_address():
    transport, seen = recording_transport(
        lambda r: httpx.Response(200, content=PNG, headers={"Content-Type": "image/png"})
    )
    calls: list[str] = []
    async with SafeFetcher(FetchSettings(), resolver=resolver({}, calls), transport=transport) as f:
        image, final = await f.fetch_image("http://134744072/a.png", limits=LIMITS)
    assert image.width == 500 and calls == []
    assert [str(r.url) for r in seen] == ["http://8.8.8.8/a.png"]


async def test_one_internal_ipv6_answer_among_public_ones_is_refused():
    calls: list[str] = []
    table = {"mixed.test": ["2606:4700:4700::1111", "93.184.216.34", "::ffff:127.0.0.1"]}
    async with SafeFetcher(FetchSettings(), resolver=resolver(table, calls), transport=never()) as f:
        with pytest.raises(UnsafeURLError, match=r"loopback address \(127\.0\.0\.1 embedded"):
            await f.fetch_image("https://mixed.test/a.png", limits=LIMITS)


# -- redirects from a public host ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "location",
    ["http://[::ffff:10.0.0.1]/x.png", "http://2130706433/x.png", "//127.0.0.1/x.png", "gopher://public.test/x",
     "file:///etc/passwd", "http://internal.test/x.png", "http://u:p@public.test/x.png", "http://0x7f.1/"],
)
async def test_redirect_from_public_to_internal_is_refused(location):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": location})

    transport, seen = recording_transport(handler)
    calls: list[str] = []
    table = {"public.test": ["93.184.216.34"], "internal.test": ["10.1.2.3"]}
    async with SafeFetcher(FetchSettings(), resolver=resolver(table, calls), transport=transport) as f:
        with pytest.raises(UnsafeURLError):
            await f.fetch_image("http://public.test/start", limits=LIMITS)
    assert [r.url.host for r in seen] == ["93.184.216.34"]  # the internal target was never contacted


async def test_redirect_loop_between_two_public_hosts_stops():
    def handler(request: httpx.Request) -> httpx.Response:
        nxt = "http://b.test/" if request.headers["host"] == "a.test" else "http://a.test/"
        return httpx.Response(301, headers={"Location": nxt})

    transport, seen = recording_transport(handler)
    table = {"a.test": ["93.184.216.34"], "b.test": ["93.184.216.35"]}
    async with SafeFetcher(FetchSettings(max_redirects=4), resolver=resolver(table, []), transport=transport) as f:
        with pytest.raises(ToolError) as ei:
            await f.fetch_image("http://a.test/", limits=LIMITS)
    assert ei.value.kind == "too_many_redirects" and len(seen) == 5


# -- resource exhaustion against a real server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    routes: dict = {}
    seen: list[dict] = []

    def handle(req, h):
        seen.append({"path": req.path, "accept-encoding": req.headers.get("Accept-Encoding")})
        route = routes.get(req.path)
        if route is None:
            send(h, 404, b"", "text/plain")
        else:
            route(req, h)

    with loopback_server(handle) as base:
        yield base, routes, seen


def _fetcher(**kw) -> SafeFetcher:
    return SafeFetcher(FetchSettings(allow=["127.0.0.1"], **kw))


def _raw(h, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
    h.send_response(status)
    for k, v in headers:
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


async def test_huge_response_headers_are_a_typed_failure(server):
    base, routes, _ = server
    routes["/h"] = lambda req, h: _raw(
        h, 200, [("Content-Type", "image/png"), ("Content-Length", str(len(PNG)))]
        + [(f"X-Junk-{i}", "j" * 1000) for i in range(300)], PNG,
    )
    async with _fetcher() as f:
        t0 = time.monotonic()
        with pytest.raises(TransientToolError) as ei:
            await f.fetch_image(f"{base}/h", limits=LIMITS)
    assert ei.value.kind == "connection_error"
    assert time.monotonic() - t0 < 5


async def test_slow_drip_body_hits_the_whole_fetch_deadline(server):
    """Each byte arrives well within any per-read timeout; only a deadline on the whole fetch stops it."""
    base, routes, _ = server

    def drip(req, h):
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Content-Length", str(len(PNG)))
        h.end_headers()
        try:
            for b in PNG:
                h.wfile.write(bytes([b]))
                h.wfile.flush()
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass

    routes["/drip"] = drip
    async with _fetcher(timeout_s=0.6) as f:
        t0 = time.monotonic()
        with pytest.raises(TransientToolError) as ei:
            await f.fetch_image(f"{base}/drip", limits=LIMITS)
        elapsed = time.monotonic() - t0
    assert ei.value.kind == "timeout" and elapsed < 2.0


async def test_content_length_lies(server):
    base, routes, _ = server
    # Claims fewer bytes than it sends: the body is cut at the claim, and the cut image does not decode.
    routes["/short"] = lambda req, h: _raw(h, 200, [("Content-Type", "image/png"),
                                                    ("Content-Length", str(len(PNG) // 2))], PNG)
    # Claims more than it sends, then hangs up.
    def long(req, h):
        _raw(h, 200, [("Content-Type", "image/png"), ("Content-Length", str(len(PNG) * 3)),
                      ("Connection", "close")], PNG)
        h.close_connection = True

    routes["/long"] = long
    # Claims a small size but streams without end (chunked): the byte cap still applies.
    def endless(req, h):
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        try:
            chunk = b"\x00" * 65536
            h.wfile.write(b"%x\r\n%s\r\n" % (len(PNG), PNG))
            for _ in range(100):
                h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass

    routes["/endless"] = endless
    async with _fetcher(max_bytes=200_000) as f:
        with pytest.raises(ToolError) as short:
            await f.fetch_image(f"{base}/short", limits=LIMITS)
        with pytest.raises(TransientToolError) as longer:
            await f.fetch_image(f"{base}/long", limits=LIMITS)
        with pytest.raises(UnsafeURLError) as endless_err:
            await f.fetch_image(f"{base}/endless", limits=LIMITS)
    assert short.value.kind == "invalid_image"
    assert longer.value.kind == "connection_error"
    assert endless_err.value.kind == "too_large"


def _gzip_bomb(decoded_mb: int) -> bytes:
    """A gzip body that starts with a real PNG (so magic-byte sniffing passes) and inflates to
    ``decoded_mb`` MiB of zeros after it."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [comp.compress(PNG)]
    zeros = b"\x00" * (1 << 20)
    for _ in range(decoded_mb):
        out.append(comp.compress(zeros))
    out.append(comp.flush())
    return b"".join(out)


async def test_gzip_bomb_is_capped_on_decoded_bytes_without_inflating_it(server):
    base, routes, seen = server
    bomb = _gzip_bomb(48)
    assert len(bomb) < 100_000
    routes["/bomb"] = lambda req, h: _raw(h, 200, [("Content-Type", "image/png"), ("Content-Encoding", "gzip"),
                                                   ("Content-Length", str(len(bomb)))], bomb)
    async with _fetcher(max_bytes=1_000_000) as f:
        tracemalloc.start()
        try:
            with pytest.raises(UnsafeURLError) as ei:
                await f.fetch_image(f"{base}/bomb", limits=LIMITS)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert ei.value.kind == "too_large" and "decoded" in str(ei.value)
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB: the bomb was inflated"
    assert seen[-1]["accept-encoding"] == "identity"


async def test_stacked_and_unknown_encodings_are_refused(server):
    base, routes, _ = server
    double = gzip.compress(_gzip_bomb(8))
    routes["/double"] = lambda req, h: _raw(h, 200, [("Content-Type", "image/png"),
                                                     ("Content-Encoding", "gzip, gzip"),
                                                     ("Content-Length", str(len(double)))], double)
    routes["/br"] = lambda req, h: _raw(h, 200, [("Content-Type", "image/png"), ("Content-Encoding", "br"),
                                                 ("Content-Length", "4")], b"\x00\x00\x00\x00")
    routes["/two-headers"] = lambda req, h: _raw(h, 200, [("Content-Type", "image/png"),
                                                          ("Content-Encoding", "gzip"), ("Content-Encoding", "gzip"),
                                                          ("Content-Length", str(len(double)))], double)
    async with _fetcher() as f:
        for path in ("/double", "/br", "/two-headers"):
            with pytest.raises(ToolError) as ei:
                await f.fetch_image(f"{base}{path}", limits=LIMITS)
            assert ei.value.kind == "bad_response" and "Content-Encoding" in str(ei.value)


async def test_honest_gzip_and_deflate_images_still_work(server):
    base, routes, _ = server
    gz = gzip.compress(PNG)
    zl = zlib.compress(PNG)
    raw_deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    rd = raw_deflate.compress(PNG) + raw_deflate.flush()
    for path, body, enc in (("/gz", gz, "gzip"), ("/zl", zl, "deflate"), ("/rd", rd, "deflate"),
                            ("/id", PNG, "identity")):
        routes[path] = (lambda b, e: lambda req, h: _raw(
            h, 200, [("Content-Type", "image/png"), ("Content-Encoding", e), ("Content-Length", str(len(b)))], b
        ))(body, enc)
    async with _fetcher() as f:
        for path in ("/gz", "/zl", "/rd", "/id"):
            image, _ = await f.fetch_image(f"{base}{path}", limits=LIMITS)
            assert image.data == PNG


async def test_corrupt_gzip_is_invalid_image(server):
    base, routes, _ = server
    body = gzip.compress(PNG)[:20] + b"garbage" * 100
    routes["/bad-gz"] = lambda req, h: _raw(h, 200, [("Content-Type", "image/png"), ("Content-Encoding", "gzip"),
                                                     ("Content-Length", str(len(body)))], body)
    async with _fetcher() as f:
        with pytest.raises(ToolError) as ei:
            await f.fetch_image(f"{base}/bad-gz", limits=LIMITS)
    assert ei.value.kind == "invalid_image"


@pytest.mark.parametrize(
    "ctype,body,kind",
    [("image/svg+xml; charset=utf-8", b'<svg xmlns="http://www.w3.org/2000/svg"/>', "bad_content_type"),
     ("IMAGE/SVG+XML", PNG, "bad_content_type"),
     ("text/html", PNG, "bad_content_type"),
     ("application/javascript", PNG, "bad_content_type"),
     ("image/png", b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>' + b" " * 64, "invalid_image"),
     ("image/png", b"<!DOCTYPE html><script>alert(1)</script>" + b" " * 64, "invalid_image")],
)
async def test_content_type_mismatch(server, ctype, body, kind):
    base, routes, _ = server
    routes["/ct"] = lambda req, h: _raw(h, 200, [("Content-Type", ctype), ("Content-Length", str(len(body)))], body)
    async with _fetcher() as f:
        with pytest.raises(ToolError) as ei:
            await f.fetch_image(f"{base}/ct", limits=LIMITS)
    assert ei.value.kind == kind


async def test_many_concurrent_hostile_fetches_do_not_leak_connections(server):
    """Refusals close what they opened: a burst of refused downloads leaves the fetcher usable."""
    base, routes, _ = server
    bomb = _gzip_bomb(4)
    routes["/b"] = lambda req, h: _raw(h, 200, [("Content-Type", "image/png"), ("Content-Encoding", "gzip"),
                                                ("Content-Length", str(len(bomb)))], bomb)
    routes["/ok"] = lambda req, h: _raw(h, 200, [("Content-Type", "image/png"), ("Content-Length", str(len(PNG)))], PNG)
    async with _fetcher(max_bytes=500_000) as f:
        results = await asyncio.gather(*(f.fetch_image(f"{base}/b", limits=LIMITS) for _ in range(8)),
                                       return_exceptions=True)
        assert all(isinstance(r, UnsafeURLError) and r.kind == "too_large" for r in results)
        image, _ = await f.fetch_image(f"{base}/ok", limits=LIMITS)
        assert image.width == 500


async def test_signed_url_credentials_stay_out_of_messages(server):
    """Image APIs hand back signed URLs (Azure SAS, S3 presigned); a failure message lands in the
    document and the logs, so it names the URL without its query string."""
    base, routes, _ = server
    routes["/signed.png"] = lambda req, h: _raw(h, 404, [("Content-Type", "text/plain"), ("Content-Length", "0")])
    secret = "sig=SECRETSIGNATURE123&X-Amz-Credential=AKIAEXAMPLE"
    async with _fetcher() as f:
        with pytest.raises(ToolError) as ei:
            await f.fetch_image(f"{base}/signed.png?{secret}#frag", limits=LIMITS)
    msg = str(ei.value)
    assert "SECRETSIGNATURE123" not in msg and "AKIAEXAMPLE" not in msg and "frag" not in msg
    async with SafeFetcher(FetchSettings(), transport=never()) as f:
        with pytest.raises(UnsafeURLError) as refused:
            await f.fetch_image(f"http://127.0.0.1/x.png?{secret}", limits=LIMITS)
    assert "SECRETSIGNATURE123" not in str(refused.value) and "/x.png?…" in str(refused.value)
