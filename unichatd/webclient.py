"""The web client's files as served: read once, gzipped once, named by version.

The page loads its scripts and stylesheet from ``/static/<version>/…``, where the version
is a digest of every file: those answers may be cached for a year, since a change to any
file changes the address.  The page itself and unversioned addresses are revalidated on
each load (``no-cache`` with an ``ETag``), so an upgrade shows at the next reload.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import importlib.resources
from dataclasses import dataclass
from importlib.resources.abc import Traversable

CONTENT_TYPES = {"html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8",
                 "css": "text/css; charset=utf-8", "svg": "image/svg+xml"}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
_PAGE = "index.html"


@dataclass(frozen=True, slots=True)
class WebFile:
    """One answer body in both encodings, with the validators for each."""

    body: bytes
    gzipped: bytes
    content_type: str
    etag: str

    @classmethod
    def of(cls, body: bytes, content_type: str) -> WebFile:
        digest = hashlib.sha256(body).hexdigest()[:20]
        # mtime=0: the same bytes give the same gzip stream on every start.
        return cls(body, gzip.compress(body, compresslevel=9, mtime=0), content_type, f'"{digest}"')

    def variant(self, gzip_accepted: bool) -> tuple[bytes, str]:
        """The body to send and its ETag (each encoding is its own representation)."""
        if gzip_accepted and len(self.gzipped) < len(self.body):
            return self.gzipped, f'{self.etag[:-1]}-gz"'
        return self.body, self.etag

    @staticmethod
    def matches(if_none_match: str | None, etag: str) -> bool:
        """Whether ``If-None-Match`` names ``etag`` — the tag of the variant that would be
        sent, so a 304 never vouches for a body in the other encoding (RFC 9110 §13.1.2)."""
        if not if_none_match:
            return False
        if if_none_match.strip() == "*":
            return True
        return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


def _walk(folder: Traversable, prefix: str = "") -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for entry in folder.iterdir():
        name = f"{prefix}{entry.name}"
        if entry.is_dir():
            found.update(_walk(entry, f"{name}/"))
        elif entry.name.rsplit(".", 1)[-1] in CONTENT_TYPES:
            found[name] = entry.read_bytes()
    return found


class WebClientFiles:
    """Every file under ``unichatd/web`` with a served extension, and the page built from
    ``index.html`` for one socket path and content limit."""

    def __init__(self, files: dict[str, bytes]) -> None:
        whole = hashlib.sha256()
        for name in sorted(files):
            whole.update(name.encode() + b"\0" + files[name] + b"\0")
        self.version = whole.hexdigest()[:12]
        self._template = files[_PAGE]
        self._files = {
            name: WebFile.of(body, CONTENT_TYPES[name.rsplit(".", 1)[-1]])
            for name, body in files.items() if name != _PAGE
        }
        self._pages: dict[tuple[str, int], WebFile] = {}

    @classmethod
    def load(cls) -> WebClientFiles:
        return cls(_walk(importlib.resources.files("unichatd").joinpath("web")))

    def asset(self, name: str) -> WebFile | None:
        return self._files.get(name)

    def page(self, ws_path: str, max_content_chars: int) -> WebFile:
        key = (ws_path, max_content_chars)
        page = self._pages.get(key)
        if page is None:
            body = (self._template.replace(b"{{WS_PATH}}", html.escape(ws_path).encode())
                    .replace(b"{{MAX_CONTENT_CHARS}}", str(max_content_chars).encode())
                    .replace(b"{{VERSION}}", self.version.encode()))
            page = self._pages[key] = WebFile.of(body, CONTENT_TYPES["html"])
        return page

    def resolve(self, path: str) -> tuple[WebFile | None, str]:
        """The file a ``/static/…`` or ``/favicon.ico`` path names, and its Cache-Control."""
        if path == "/favicon.ico":
            return self.asset("icon.svg"), REVALIDATE
        name = path.removeprefix("/static/")
        version, _, rest = name.partition("/")
        if rest and version == self.version:
            return self.asset(rest), IMMUTABLE
        if rest and len(version) == len(self.version) and version.isalnum():
            # A page from before an upgrade asks for its old version: it gets today's file,
            # not to be kept, so the next reload fetches everything afresh.
            return self.asset(rest), REVALIDATE
        return self.asset(name), REVALIDATE


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether ``Accept-Encoding`` admits gzip (RFC 9110 §12.5.3): named with a q above 0,
    or not named and ``*`` admitted."""
    qualities: dict[str, float] = {}
    for item in (accept_encoding or "").split(","):
        coding, _, params = item.partition(";")
        quality = 1.0
        params = params.strip().lower()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        qualities[coding.strip().lower()] = quality
    for coding in ("gzip", "x-gzip", "*"):
        if coding in qualities:
            return qualities[coding] > 0
    return False
