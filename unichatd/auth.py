"""Session tokens: HS256 JWTs signed with the shared key, and where a handshake carries one.

Only HS256 is accepted; ``alg: none`` and every other algorithm are refused by PyJWT
because the accepted list is fixed here.  Failures raise :class:`AuthError` whose reason
is the close reason the server sends with code 4001.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import jwt

from .errors import AuthError

ALGORITHM = "HS256"
COOKIE_NAME = "unichat_token"
AUTH_REQUIRED = "authentication required"
TOKEN_EXPIRED = "token expired"
TOKEN_REVOKED = "token revoked"
_MAX_USER_ID = 2**63 - 1
_MAX_USER_ID_DIGITS = len(str(_MAX_USER_ID))
MAX_EXPIRY = 253_402_300_799
"""The last second of year 9999: a later ``exp`` cannot be shown as a timestamp."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a valid token speaks for, and until when."""

    user_id: int
    username: str
    first_name: str
    expires_at: float
    """The token's ``exp``, in seconds since the epoch."""
    issued_at: float | None = None
    """The token's ``iat`` (None without one): revocation refuses tokens issued before it."""

    def revoked(self, revoked_before_ms: int | None) -> bool:
        """Whether a revocation at ``revoked_before_ms`` covers this token (one without
        ``iat`` cannot show it is newer, so it is covered)."""
        if revoked_before_ms is None:
            return False
        return self.issued_at is None or round(self.issued_at * 1000) <= revoked_before_ms


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The keys tokens are checked against, and the one new tokens are signed with.

    A token whose header names a ``kid`` is checked against that key alone; a token
    without one against every key (the unnamed legacy key first), so tokens minted
    before a rotation stay valid until they expire or their key is dropped.
    """

    signing: tuple[str | None, str]
    """(kid, key) that signs new tokens: the newest named key, else the legacy key."""
    named: dict[str, str]
    legacy: str | None = None

    @classmethod
    def single(cls, key: str) -> KeyRing:
        return cls((None, key), {}, key)

    def candidates(self, token: str) -> list[str]:
        if not self.named and self.legacy is not None:
            return [self.legacy]  # one key: no header to read first (PyJWT checks it anyway)
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            return []
        if kid is not None:
            key = self.named.get(kid) if isinstance(kid, str) else None
            return [key] if key is not None else []
        legacy = [self.legacy] if self.legacy is not None else []
        return legacy + list(self.named.values())


def mint_token(
    key: str | KeyRing, user_id: int, username: str, *, first_name: str = "", ttl: int = 86400
) -> str:
    ring = key if isinstance(key, KeyRing) else KeyRing.single(key)
    kid, secret = ring.signing
    now = time.time()
    # iat to the millisecond (RFC 7519 allows fractions): a token minted right after a
    # revocation is not mistaken for one minted in the same second before it.
    claims: dict[str, object] = {"sub": str(user_id), "name": username, "iat": math.floor(now * 1000) / 1000,
                                 "exp": int(now) + ttl}
    if first_name:
        claims["first_name"] = first_name
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, secret, algorithm=ALGORITHM, headers=headers)


def verify_token(token: str, key: str | KeyRing) -> Identity:
    """Check signature, algorithm and times; return the identity or raise :class:`AuthError`."""
    ring = key if isinstance(key, KeyRing) else KeyRing.single(key)
    claims: dict[str, object] | None = None
    for secret in ring.candidates(token):
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                options={"require": ["sub", "exp"]},
            )
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.ExpiredSignatureError:
            raise AuthError(TOKEN_EXPIRED) from None
        except (jwt.PyJWTError, ValueError, OverflowError, TypeError):
            # PyJWT turns absurd numeric claims (Infinity, 1e400) into these, not PyJWTError.
            raise AuthError(AUTH_REQUIRED) from None
    if claims is None:
        raise AuthError(AUTH_REQUIRED)
    sub, name, first_name = claims.get("sub"), claims.get("name"), claims.get("first_name", "")
    if not isinstance(sub, str) or not sub.isascii() or not sub.isdecimal() or len(sub) > _MAX_USER_ID_DIGITS:
        raise AuthError(AUTH_REQUIRED)
    user_id = int(sub)
    if not 1 <= user_id <= _MAX_USER_ID:
        raise AuthError(AUTH_REQUIRED)
    if not isinstance(name, str) or not name.strip() or len(name) > 150:
        raise AuthError(AUTH_REQUIRED)
    if first_name is None:
        first_name = ""
    if not isinstance(first_name, str) or len(first_name) > 150:
        raise AuthError(AUTH_REQUIRED)
    if not _encodable(name) or not _encodable(first_name):
        raise AuthError(AUTH_REQUIRED)  # e.g. a lone surrogate: no database could store it
    exp = claims["exp"]
    if not isinstance(exp, int | float) or isinstance(exp, bool) or not exp <= MAX_EXPIRY:
        raise AuthError(AUTH_REQUIRED)
    iat = claims.get("iat")
    issued_at = float(iat) if isinstance(iat, int | float) and not isinstance(iat, bool) else None
    return Identity(user_id=user_id, username=name, first_name=first_name, expires_at=float(exp),
                    issued_at=issued_at)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def bearer_token(authorization: str | None) -> str | None:
    """The credentials of ``Authorization: Bearer <token>``, or None."""
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


def token_from_handshake(path: str, headers: Mapping[str, str]) -> str | None:
    """The token from the ``token`` query parameter, a Bearer header, or the cookie, in that order."""
    query = parse_qs(urlsplit(path).query)
    if query.get("token"):
        return query["token"][0]
    bearer = bearer_token(headers.get("Authorization"))
    if bearer is not None:
        return bearer
    # Read the cookie by hand: one malformed neighbour must not hide a good token
    # (http.cookies rejects the whole header for it).
    for pair in headers.get("Cookie", "").split(";"):
        name, _, value = pair.strip().partition("=")
        if name == COOKIE_NAME and value.strip().strip('"'):
            return value.strip().strip('"')
    return None
