"""The in.php fields of one reCAPTCHA under the tests' API key: the request the sandbox's model tests and its HTTP
tests both send, so the two layers are checked against the same input."""

from __future__ import annotations

KEY = "test-key"
RECAPTCHA = {
    "key": KEY,
    "method": "userrecaptcha",
    "googlekey": "6Le-site",
    "pageurl": "https://example.com/",
}
