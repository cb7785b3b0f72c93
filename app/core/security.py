"""API keys: who is calling, as an owner id that sessions record (never the key itself).

With no key configured every caller is the one anonymous owner and nothing is checked
(the open behaviour README's "Security" section describes). With keys, a request presents
`Authorization: Bearer <key>`: the key is hashed once (sha256) and its digest looked up
among the digests of the configured keys, then confirmed with `hmac.compare_digest`. A
dict lookup on a digest tells a timing attacker nothing about the keys (he cannot choose
digests), and no key is kept in memory or written anywhere in the clear.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from app.core.errors import ServiceError

ANONYMOUS = "-"  # the one owner when keys are off (not a hex digest: never a key's owner)
OWNER_HEX = 16  # hex digits of a key's sha256 that name its owner in session records


class Unauthorized(ServiceError):
    """No valid API key. `error` is RFC 6750's code for a key sent but refused (none when
    the key is missing)."""

    def __init__(self, detail: str, error: str | None = None):
        super().__init__(detail)
        self.error = error


MISSING = "this server needs an API key: send it as 'Authorization: Bearer <key>'"
NOT_BEARER = "the Authorization header must be 'Bearer <key>'"
INVALID = "the API key is not valid"


def owner_of(key: str) -> str:
    """The owner id that sessions created with `key` record: a prefix of its sha256."""
    return hashlib.sha256(key.encode()).hexdigest()[:OWNER_HEX]


class ApiKeys:
    def __init__(self, keys: Iterable[str]):
        # digest -> (digest, owner): the stored digest is what the presented one is checked
        # against with compare_digest once found
        self._owners = {
            d: (d, owner_of(k)) for k in keys if (d := hashlib.sha256(k.encode()).digest())
        }

    @property
    def enabled(self) -> bool:
        return bool(self._owners)

    def owner(self, authorization: str | bytes | None) -> str:
        """The owner id of a request's Authorization header; Unauthorized if it has no valid
        key (and keys are on)."""
        if not self._owners:
            return ANONYMOUS
        if not authorization:
            raise Unauthorized(MISSING)
        if isinstance(authorization, bytes):
            authorization = authorization.decode("latin-1")
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized(NOT_BEARER, "invalid_request")
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        stored, owner = self._owners.get(digest, (NO_KEY, ""))
        if not hmac.compare_digest(digest, stored):
            raise Unauthorized(INVALID, "invalid_token")
        return owner


NO_KEY = bytes(32)  # compared against when the digest is unknown: the same work either way
