"""HTTP building blocks for the chat port: responses, the web client's files and CSP,
the session cookie, header and origin checks.  ``endpoints`` decides which applies.

Every answer here is a complete :class:`~websockets.http11.Response`; error answers
carry a small JSON body (``{"error": code, "message": text}``) and never a traceback.
"""

from __future__ import annotations

import hmac
import http
import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import quote, urlsplit

import orjson
from websockets.datastructures import Headers, MultipleValuesError
from websockets.http11 import Request, Response

from .errors import BadRequest
from .models import FileRef
from .webclient import REVALIDATE, WebClientFiles, WebFile, accepts_gzip

READ_METHODS = frozenset({"GET", "HEAD"})
SESSION_PATH = "/session"

_HOST_PATTERN = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}

def header(request: Request, name: str) -> str | None:
    """The one value of ``name``; a header that must be single but came twice is a 400."""
    try:
        return request.headers.get(name)
    except MultipleValuesError:
        raise BadRequest(f"duplicate {name} header") from None


def list_header(request: Request, name: str) -> str | None:
    """A comma-separated list header, which may come split over several lines."""
    values = request.headers.get_all(name)
    return ", ".join(values) if values else None


def handshake_headers(request: Request) -> dict[str, str]:
    """The headers a token may come from, with duplicates refused or merged.

    Two ``Authorization`` headers are ambiguous (400); several ``Cookie`` headers are
    one cookie list split up, as RFC 6265 allows.
    """
    found: dict[str, str] = {}
    authorization = header(request, "Authorization")
    if authorization is not None:
        found["Authorization"] = authorization
    cookies = request.headers.get_all("Cookie")
    if cookies:
        found["Cookie"] = "; ".join(cookies)
    return found


def error(status: http.HTTPStatus, code: str, message: str, *, head: bool = False,
          extra: Iterable[tuple[str, str]] = ()) -> Response:
    body = orjson.dumps({"error": code, "message": message}) + b"\n"
    return respond(status, body, "application/json", head=head, extra=extra)


def respond(status: http.HTTPStatus, body: bytes, content_type: str, *, head: bool = False,
            extra: Iterable[tuple[str, str]] = (), cache: str = "no-store", length: int | None = None) -> Response:
    """A response with its length (``length`` when the body was not read, for HEAD); a HEAD
    request gets the headers alone."""
    headers = Headers(
        [("Content-Type", content_type), ("Content-Length", str(len(body) if length is None else length)),
         ("Cache-Control", cache), *extra]
    )
    return Response(status.value, status.phrase, headers, b"" if head else body)


def not_found(head: bool = False) -> Response:
    return error(http.HTTPStatus.NOT_FOUND, "not_found", "no such resource", head=head)


def method_not_allowed(allowed: Iterable[str]) -> Response:
    allow = ", ".join(sorted(allowed))
    return error(http.HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", f"allowed methods: {allow}",
                 extra=[("Allow", allow)])


# -- files ----------------------------------------------------------------------------

INLINE_IMAGES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
"""Shown in the page rather than downloaded (protocol.md §6.3); none of them runs script."""


def file_download(file: FileRef, data: bytes, *, head: bool) -> Response:
    """A stored file: never sniffed, never run as a page, downloaded unless a plain image."""
    inline = file.content_type in INLINE_IMAGES
    ascii_name = "".join(char if char.isascii() and char.isprintable() and char not in '"\\' else "_"
                         for char in file.name)
    disposition = (f'{"inline" if inline else "attachment"}; filename="{ascii_name}"; '
                   f"filename*=UTF-8''{quote(file.name, safe='')}")
    return respond(http.HTTPStatus.OK, data, file.content_type if inline else "application/octet-stream",
                   head=head, cache="private, max-age=86400", length=file.size,
                   extra=[("X-Content-Type-Options", "nosniff"), ("Content-Disposition", disposition),
                          ("Content-Security-Policy", "default-src 'none'; sandbox")])


# -- the web client -------------------------------------------------------------------


def web_client(request: Request, path: str, files: WebClientFiles, page: WebFile) -> Response:
    """``/``, ``/static/<file>`` and ``/favicon.ico``: gzipped when the client takes it,
    cached by version (see :mod:`unichatd.webclient`), with a strict Content-Security-Policy."""
    head = request.method == "HEAD"
    found, cache = (page, REVALIDATE) if path == "/" else files.resolve(path)
    if found is None:
        return not_found(head)
    gzipped = accepts_gzip(list_header(request, "Accept-Encoding"))
    body, etag = found.variant(gzipped)
    validators = [("ETag", etag), ("Vary", "Accept-Encoding")]
    if body is not found.body:
        validators.append(("Content-Encoding", "gzip"))
    if WebFile.matches(list_header(request, "If-None-Match"), etag):
        headers = Headers([("Cache-Control", cache), *validators])
        return Response(http.HTTPStatus.NOT_MODIFIED.value, http.HTTPStatus.NOT_MODIFIED.phrase, headers, b"")
    # The page may talk only to its own origin, WebSocket included; the token sits in
    # sessionStorage, so no script from elsewhere may run here.
    host = header(request, "Host") or ""
    ws_sources = f" ws://{host} wss://{host}" if _HOST_PATTERN.fullmatch(host) else ""
    return respond(http.HTTPStatus.OK, body, found.content_type, head=head, cache=cache, extra=[
        *validators,
        ("Content-Security-Policy",
         f"default-src 'self'; connect-src 'self'{ws_sources}; img-src 'self' data:; "
         "base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
    ])


# -- the session cookie ---------------------------------------------------------------


def session_cookie(token: str, max_age: int, *, secure: bool) -> tuple[str, str]:
    """``Set-Cookie`` for the web client's token: HttpOnly (no script reads it back),
    SameSite=Strict (no other site's page sends it)."""
    attributes = f"Path=/; Max-Age={max(0, max_age)}; HttpOnly; SameSite=Strict"
    if secure:
        attributes += "; Secure"
    return "Set-Cookie", f"unichat_token={token}; {attributes}"


# -- /metrics access ------------------------------------------------------------------


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Constant-time comparison of ``Authorization: Bearer <token>``, whatever bytes came."""
    presented = (authorization or "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(presented, f"Bearer {token}".encode())


# -- the origin rule ------------------------------------------------------------------


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...], public_url: str) -> bool:
    """protocol.md §1: no Origin (not a browser) passes; ``["*"]`` accepts any; a listed
    origin passes; with an empty list only the server's own origin does — the request's
    ``Host`` or ``server.public_url``, compared by host name and port."""
    if origin is None or "*" in allowed:
        return True
    if allowed:
        return origin in allowed
    own = _origin_key(origin)
    if own is None:
        return False  # "null" (a sandboxed or file: page) and the unparsable are foreign
    scheme = urlsplit(origin).scheme.lower()
    if host is not None and _host_key(host, _DEFAULT_PORTS.get(scheme, 80)) == own:
        return True
    return bool(public_url) and _origin_key(public_url) == own


def _origin_key(url: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.hostname.lower().rstrip("."), port if port is not None else _DEFAULT_PORTS[scheme]


def _host_key(host: str, default_port: int) -> tuple[str, int] | None:
    if not _HOST_PATTERN.fullmatch(host):
        return None
    name, port = host, default_port
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        if rest:
            port = int(rest[1:])
    elif ":" in host:
        name, _, port_text = host.rpartition(":")
        port = int(port_text)
    return name.lower().rstrip("."), port
