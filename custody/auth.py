"""Token authentication, scopes and per-token rate limits (DESIGN invariant 4).

Every call carries the account token in the HTTP header `token` (reference section 1). Only
its SHA-256 is stored; the row is found by that hash and the hash is compared again with
`hmac.compare_digest`. A cold token reaches the cold-receiving side only and can never send;
a hot token reaches the hot side; every query is filtered by the token's own account, so
neither ever sees another account.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import g, request
from sqlalchemy import select

from custody.accounts import hash_token
from custody.errors import Forbidden, RateLimited, Unauthorized
from custody.extensions import db, limiter, token_cache
from custody.models import ApiToken, TokenScope, Wallet

TOKEN_HEADER = "token"  # noqa: S105 (the header name)
MAX_TOKEN_LEN = 256

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Principal:
    """Who is calling: one token of one account, with its scope."""

    token_id: int
    account_id: int
    scope: TokenScope
    rate_limit: int

    @property
    def wallet(self) -> Wallet:
        """The side of the account this token reaches."""
        return Wallet.COLD if self.scope is TokenScope.COLD else Wallet.HOT


def authenticate(token: str | None) -> Principal:
    if not token:
        raise Unauthorized("missing token: send the account token in the 'token' header")
    if len(token) > MAX_TOKEN_LEN:
        raise Unauthorized("invalid token")
    digest = hash_token(token.strip())
    cached = token_cache.get(digest)
    if cached is not None:
        return cached
    row = db.reader.execute(
        select(
            ApiToken.id,
            ApiToken.account_id,
            ApiToken.scope,
            ApiToken.rate_limit_per_minute,
            ApiToken.token_hash,
        ).where(ApiToken.token_hash == digest, ApiToken.revoked_at.is_(None))
    ).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        raise Unauthorized("invalid token")
    principal = Principal(row.id, row.account_id, TokenScope(row.scope), row.rate_limit_per_minute)
    token_cache.put(digest, principal)
    return principal


def current_principal() -> Principal:
    return g.principal


def require_token(*scopes: TokenScope) -> Callable[[F], F]:
    """Authenticate, check the scope (any scope when none given) and the rate limit."""
    allowed = frozenset(scopes) or frozenset(TokenScope)

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            principal = authenticate(request.headers.get(TOKEN_HEADER))
            retry = limiter.hit(principal.token_id, principal.rate_limit)
            if retry is not None:
                raise RateLimited(
                    f"rate limit of {principal.rate_limit} requests per minute exceeded",
                    retry_after=int(retry) + 1,
                )
            if principal.scope not in allowed:
                names = " or ".join(sorted(s.value for s in allowed))
                raise Forbidden(
                    f"this call needs a {names} token; a {principal.scope.value} "
                    "token cannot use it"
                )
            g.principal = principal
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature

    return decorate


hot_only = require_token(TokenScope.HOT)
any_token = require_token()
