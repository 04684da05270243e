"""How the chat port serves the web client's files: compressed, cached by version, every
module the page imports present."""

from __future__ import annotations

import asyncio
import gzip
import posixpath
import re
import urllib.error
import urllib.request
from email.message import Message

import pytest

from tests.conftest import RunningServer
from unichatd.webclient import WebClientFiles, accepts_gzip

IMPORT = re.compile(r'from "(\./[^"]+|\.\./[^"]+)"')


def _get(url: str, method: str = "GET", **headers: str) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as failure:
        return failure.code, failure.headers, failure.read()


async def get(url: str, method: str = "GET", **headers: str) -> tuple[int, Message, bytes]:
    return await asyncio.to_thread(_get, url, method, **headers)


async def _version(server: RunningServer) -> str:
    _, _, page = await get(f"{server.http_url}/")
    found = re.search(rb'src="/static/([0-9a-f]+)/app\.js"', page)
    assert found, page[:500]
    return found.group(1).decode()


@pytest.mark.socket
@pytest.mark.asyncio
async def test_every_module_the_page_imports_is_served_compressed_and_cacheable(chat_server: RunningServer) -> None:
    """Walk the imports from app.js: each module answers 200, gzipped on request, cached for a
    year under the page's version; the whole client's size is printed both ways."""
    version = await _version(chat_server)
    base = f"{chat_server.http_url}/static/{version}/"
    todo, seen, plain_total, gzip_total = ["app.js", "style.css", "icon.svg"], set(), 0, 0
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        status, headers, body = await get(base + name, **{"Accept-Encoding": "gzip, deflate, br"})
        assert status == 200, name
        assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert headers["Vary"] == "Accept-Encoding"
        assert headers["X-Content-Type-Options"] == "nosniff"
        plain = gzip.decompress(body) if headers["Content-Encoding"] == "gzip" else body
        if name.endswith(".js"):
            assert headers["Content-Encoding"] == "gzip"
            assert headers["Content-Type"].startswith("text/javascript")
            folder = posixpath.dirname(name)
            todo.extend(posixpath.normpath(posixpath.join(folder, target)) for target in IMPORT.findall(plain.decode()))
        plain_total += len(plain)
        gzip_total += len(body)
    assert {"connection.js", "state.js", "views/messages.js", "views/rooms.js", "views/composer.js"} <= seen
    print(f"\nweb client: {len(seen)} files, {plain_total} bytes, {gzip_total} bytes as sent gzipped")
    assert gzip_total < plain_total / 2


@pytest.mark.socket
@pytest.mark.asyncio
async def test_revalidation_answers_304_and_the_page_is_never_stale(chat_server: RunningServer) -> None:
    """The page is revalidated on each load (no-cache + ETag); a matching If-None-Match gets 304
    with no body, for either encoding."""
    url = f"{chat_server.http_url}/"
    status, headers, _ = await get(url, **{"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Cache-Control"] == "no-cache"
    assert headers["Content-Encoding"] == "gzip"
    etag = headers["ETag"]
    status, headers, body = await get(url, **{"If-None-Match": etag, "Accept-Encoding": "gzip"})
    assert (status, body, headers["ETag"]) == (304, b"", etag)
    # Each encoding is its own representation: the gzip tag does not vouch for the plain body.
    status, headers, body = await get(url, **{"If-None-Match": etag})
    assert status == 200
    assert headers["ETag"] != etag
    assert headers["Content-Encoding"] is None
    status, _, body = await get(url, **{"If-None-Match": f'"x", W/{headers["ETag"]}'})
    assert (status, body) == (304, b"")
    status, _, body = await get(url, **{"If-None-Match": '"something-else"'})
    assert status == 200
    assert b"unichat" in body


@pytest.mark.socket
@pytest.mark.asyncio
async def test_gzip_only_when_the_client_takes_it(chat_server: RunningServer) -> None:
    version = await _version(chat_server)
    url = f"{chat_server.http_url}/static/{version}/app.js"
    for accept in ("", "identity", "gzip;q=0", "br", "*;q=0"):
        status, headers, body = await get(url, **({"Accept-Encoding": accept} if accept else {}))
        assert (status, headers["Content-Encoding"]) == (200, None), accept
        assert body.startswith(b"//")
    status, headers, body = await get(url, "HEAD", **{"Accept-Encoding": "gzip"})
    assert (status, body, headers["Content-Encoding"]) == (200, b"", "gzip")
    assert int(headers["Content-Length"]) > 0


@pytest.mark.socket
@pytest.mark.asyncio
async def test_favicon_old_versions_and_unknown_files(chat_server: RunningServer) -> None:
    """/favicon.ico is the icon; a page from before an upgrade gets today's files, uncached;
    anything outside the client's files is a 404 with a JSON body."""
    status, headers, body = await get(f"{chat_server.http_url}/favicon.ico")
    assert status == 200
    assert headers["Content-Type"] == "image/svg+xml"
    assert body.startswith(b"<svg")
    status, headers, _ = await get(f"{chat_server.http_url}/static/000000000000/app.js")
    assert status == 200
    assert headers["Cache-Control"] == "no-cache"
    version = await _version(chat_server)
    for path in ("/static/nothing.js", f"/static/{version}/../pyproject.toml", "/static/../config.py",
                 f"/static/{version}/views/../../unichatd/server.py", "/static/index.html"):
        status, headers, body = await get(chat_server.http_url + path)
        assert (status, headers["Content-Type"]) == (404, "application/json"), path
        assert b'"error":"not_found"' in body


@pytest.mark.socket
@pytest.mark.asyncio
async def test_the_page_carries_the_content_limit(tmp_path: object) -> None:
    """The composer's counter uses the server's limits.max_content_chars, read from the page."""
    from tests.conftest import free_port, make_config, start_server

    running = await start_server(make_config(tmp_path, server={"port": free_port()},  # type: ignore[arg-type]
                                             limits={"max_content_chars": 1234}))
    try:
        _, _, page = await get(f"{running.http_url}/")
        assert b'<meta name="unichat-max-content-chars" content="1234">' in page
    finally:
        await running.server.stop()


@pytest.mark.unit
def test_accept_encoding_rules() -> None:
    assert accepts_gzip("gzip")
    assert accepts_gzip("deflate, gzip;q=0.5")
    assert accepts_gzip("*")
    assert accepts_gzip("GZIP ; q=1.0")
    assert accepts_gzip("br;q=1, *;q=0.1")
    assert not accepts_gzip(None)
    assert not accepts_gzip("")
    assert not accepts_gzip("br")
    assert not accepts_gzip("gzip;q=0")
    assert not accepts_gzip("gzip;q=0, *")
    assert not accepts_gzip("*;q=0")
    assert not accepts_gzip("gzip;q=bogus")


@pytest.mark.unit
def test_the_version_follows_every_file() -> None:
    files = {"index.html": b"<p>{{VERSION}}</p>", "app.js": b"1", "views/a.js": b"2"}
    first = WebClientFiles(files)
    changed = WebClientFiles({**files, "views/a.js": b"3"})
    assert first.version != changed.version
    assert first.page("/ws/", 10).body == f"<p>{first.version}</p>".encode()
    assert first.resolve(f"/static/{first.version}/views/a.js")[0] is first.asset("views/a.js")


@pytest.mark.socket
@pytest.mark.asyncio
async def test_list_headers_split_over_several_lines_are_joined(chat_server: RunningServer) -> None:
    """Accept-Encoding and If-None-Match may come on several lines (RFC 9110 §5.3): not a 400."""
    import http.client

    def fetch(extra: list[tuple[str, str]]) -> tuple[int, str | None]:
        connection = http.client.HTTPConnection("127.0.0.1", chat_server.server.port, timeout=5)
        connection.putrequest("GET", "/", skip_accept_encoding=True)
        for name, value in extra:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        response.read()
        connection.close()
        return response.status, response.getheader("ETag")

    status, etag = await asyncio.to_thread(fetch, [("Accept-Encoding", "br"), ("Accept-Encoding", "gzip")])
    assert status == 200
    assert etag is not None
    assert etag.endswith('-gz"')
    status, _ = await asyncio.to_thread(fetch, [("Accept-Encoding", "gzip"), ("If-None-Match", '"a"'),
                                                 ("If-None-Match", etag)])
    assert status == 304
