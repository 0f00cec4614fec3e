"""A logging filter that blanks secrets in any record, whoever logs it (urllib3 logs full URLs on retries).

The API key travels in ``key=`` of res.php query strings and the Redis password in ``redis://:pw@`` URLs;
both patterns are rewritten before a record reaches any handler.
"""

from __future__ import annotations

import logging
import re

SECRET_PATTERNS = (
    (re.compile(r"(\bkey=)[^&\s'\"]+", re.IGNORECASE), r"\1***"),
    (re.compile(r"(rediss?(?:\+sentinel)?://[^:/@\s]*:)[^@\s]+@"), r"\1***@"),
    # Credentials in an API base or proxy URL (``http://user:pass@proxy``): the whole user part goes.
    (re.compile(r"(\bhttps?://)[^/@\s]+@", re.IGNORECASE), r"\1***@"),
)


def redact(text: str) -> str:
    """``text`` with API keys and URL passwords replaced by ``***``."""
    for pattern, replacement in SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_url(url: str) -> str:
    """``url`` without the credentials of its user part, for messages and logs."""
    return redact(url)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (arguments merged in) with secrets blanked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install(handler: logging.Handler | None = None) -> None:
    """Add the filter to ``handler``, or to every handler of the root logger; quiet urllib3's retry noise."""
    handlers = [handler] if handler is not None else logging.getLogger().handlers
    for h in handlers:
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
