"""What a response or a log line may quote: short prefixes of inputs, URLs without secrets."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit, urlunsplit

QUOTE_CHARS = 40  # an input quoted in an error message: at most this many characters
_SHA256 = re.compile(r"\b([0-9a-f]{12})[0-9a-f]{52}\b")
_SESSION_IN_PATH = re.compile(r"(/sessions/)([^/]+)")


def clip(value: str, limit: int = QUOTE_CHARS) -> str:
    """`value` quoted for a message (repr), cut to a prefix saying how long it was."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value):,} characters)"


def clip_number(value: int | str, limit: int = QUOTE_CHARS) -> str:
    """A number of the input (an int, or its digits) for a message, unquoted: its first
    `limit` characters when longer, saying how long it was."""
    text = str(value)  # JSON parsing already refused more digits than Python prints
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


def redact_url(url: str) -> str:
    """The URL without its password (and user name): `redis://***@host:6379/0`."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:  # IPv6
            host = f"[{host}]"
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port is not None else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:  # unparseable (a bad port): say nothing of it
        return "<a URL that cannot be parsed>"


def short_digests(text: str) -> str:
    """sha256 hex digests in `text` cut to their first 12 characters."""
    return _SHA256.sub(r"\1...", text)


def redact_path(path: str) -> str:
    """`path` with a session id replaced by a tag: `/v1/sessions/~3fa2b1c0/next-word`.

    Without API keys a session id is all it takes to use a session, so logs never hold one.
    The tag (8 hex digits of its sha256) cannot give the id back, and is the same on every
    line about that session, so they can still be followed."""
    return _SESSION_IN_PATH.sub(_tag, path)


def session_tag(session_id: str) -> str:
    """What a log says for a session: `~` and 8 hex digits of its id's sha256."""
    return "~" + hashlib.sha256(session_id.encode()).hexdigest()[:8]


def _tag(m: re.Match[str]) -> str:
    return m[1] + session_tag(m[2])
