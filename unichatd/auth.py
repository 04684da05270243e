"""Session tokens: HS256 JWTs signed with the shared key, and where a handshake carries one.

Only HS256 is accepted; ``alg: none`` and every other algorithm are refused by PyJWT
because the accepted list is fixed here.  Failures raise :class:`AuthError` whose reason
is the close reason the server sends with code 4001.
"""

from __future__ import annotations

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
_MAX_USER_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a valid token speaks for, and until when."""

    user_id: int
    username: str
    first_name: str
    expires_at: float
    """The token's ``exp``, in seconds since the epoch."""


def mint_token(
    key: str, user_id: int, username: str, *, first_name: str = "", ttl: int = 86400
) -> str:
    now = int(time.time())
    claims: dict[str, object] = {"sub": str(user_id), "name": username, "iat": now, "exp": now + ttl}
    if first_name:
        claims["first_name"] = first_name
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def verify_token(token: str, key: str) -> Identity:
    """Check signature, algorithm and times; return the identity or raise :class:`AuthError`."""
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "exp"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError(TOKEN_EXPIRED) from None
    except jwt.PyJWTError:
        raise AuthError(AUTH_REQUIRED) from None
    sub, name, first_name = claims.get("sub"), claims.get("name"), claims.get("first_name", "")
    if not isinstance(sub, str) or not sub.isascii() or not sub.isdecimal():
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
    exp = claims["exp"]
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise AuthError(AUTH_REQUIRED)
    return Identity(user_id=user_id, username=name, first_name=first_name, expires_at=float(exp))


def token_from_handshake(path: str, headers: Mapping[str, str]) -> str | None:
    """The token from the ``token`` query parameter, a Bearer header, or the cookie, in that order."""
    query = parse_qs(urlsplit(path).query)
    if query.get("token"):
        return query["token"][0]
    authorization = headers.get("Authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    # Read the cookie by hand: one malformed neighbour must not hide a good token
    # (http.cookies rejects the whole header for it).
    for pair in headers.get("Cookie", "").split(";"):
        name, _, value = pair.strip().partition("=")
        if name == COOKIE_NAME and value.strip().strip('"'):
            return value.strip().strip('"')
    return None
