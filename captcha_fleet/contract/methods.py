"""The CAPTCHA methods the fleet knows, in one table: adding a method is one entry here (and its test).

Every consumer reads this table instead of keeping its own list: the worker answers a task that lacks a
required parameter with the provider's code for it, without paying for a submit (``Task.missing_param`` in
:mod:`captcha_fleet.contract.tasks`); the API client sends a method's upload as a file (``post``); the worker's
metrics label a method by its entry (anything else is ``other``, so producers cannot grow the series);
``api.first_poll_delay_s`` and the provider model's solve times start from the entries' values; and the sandbox
accepts exactly these methods, answering a missing parameter with the entry's code, as the real service does.

An entry lists at most what the provider requires (CaptchaAI's ``in.php``, 2captcha-compatible): the worker must
never refuse a task the provider would accept.

A method whose first-poll delay and solve time are the defaults (token CAPTCHAs) does not appear in the
per-method mappings: it falls back to ``default`` there, so a config that scales ``default`` (tests, benches,
replays) scales it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

# What a solve answers: a browser token, the text read from an image, or the answer to a text question.
Kind = Literal["token", "image", "text"]
# How an image travels to ``in.php``: base64 in a form field, or the raw bytes as a multipart file upload
# (the wire format carries both as base64 text; the API client decodes an upload).
ImageForm = Literal["base64", "upload"]

# Token CAPTCHAs take ~15 s on the real service, images ~5 s; a method not in the table gets the defaults.
DEFAULT_FIRST_POLL_DELAY_S = 15.0
IMAGE_FIRST_POLL_DELAY_S = 5.0
DEFAULT_SOLVE_MEDIAN_S = 15.0
IMAGE_SOLVE_MEDIAN_S = 5.0
DEFAULT_SOLVE_SIGMA = 0.3
# The label of a method the table does not know (and of an empty one) in the worker's metrics.
OTHER_LABEL = "other"
EMPTY_LABEL = "unknown"


@dataclass(frozen=True)
class Param:
    """A required ``in.php`` parameter and the error code the provider answers when it is missing or blank."""

    name: str
    missing_error: str = "ERROR_BAD_PARAMETERS"
    image: ImageForm | None = None


@dataclass(frozen=True)
class CaptchaMethod:
    """One CAPTCHA method: what it needs, what it answers, when to poll it and how the sandbox solves it."""

    name: str
    kind: Kind
    required: tuple[Param, ...]
    first_poll_delay_s: float = DEFAULT_FIRST_POLL_DELAY_S
    # The sandbox's default solve time: a lognormal with this median and sigma (trace seconds).
    solve_median_s: float = DEFAULT_SOLVE_MEDIAN_S
    solve_sigma: float = DEFAULT_SOLVE_SIGMA
    metric_label: str = ""

    def __post_init__(self) -> None:
        if not self.metric_label:
            object.__setattr__(self, "metric_label", self.name)

    @property
    def uploads(self) -> tuple[str, ...]:
        """The parameters sent as multipart files (their wire value is base64 text)."""
        return tuple(p.name for p in self.required if p.image == "upload")

    def missing(self, params: Mapping[str, object]) -> Param | None:
        """The first required parameter ``params`` lacks (absent, a blank string, an image that is no text), if any."""
        for param in self.required:
            value = params.get(param.name)
            if isinstance(value, str) and not value.strip():
                return param
            if value is None or (param.image is not None and not isinstance(value, str)):
                return param
        return None


def token(name: str, *params: str | Param) -> CaptchaMethod:
    """A method answered with a browser token (the default delays); a bare name is ERROR_BAD_PARAMETERS."""
    required = tuple(p if isinstance(p, Param) else Param(p) for p in params)
    return CaptchaMethod(name, "token", required)


def image(name: str, param: str, form: ImageForm) -> CaptchaMethod:
    """A method that sends an image in ``param`` and answers its text (~5 s)."""
    return CaptchaMethod(
        name,
        "image",
        (Param(param, "ERROR_ZERO_CAPTCHA_FILESIZE", form),),
        first_poll_delay_s=IMAGE_FIRST_POLL_DELAY_S,
        solve_median_s=IMAGE_SOLVE_MEDIAN_S,
    )


_SITEKEY = Param("sitekey", "ERROR_GOOGLEKEY")
_PAGEURL = Param("pageurl", "ERROR_PAGEURL")

METHODS: Mapping[str, CaptchaMethod] = MappingProxyType(
    {
        m.name: m
        for m in (
            token("userrecaptcha", Param("googlekey", "ERROR_GOOGLEKEY"), _PAGEURL),
            token("hcaptcha", _SITEKEY, _PAGEURL),
            token("turnstile", _SITEKEY, _PAGEURL),
            token("funcaptcha", "publickey", _PAGEURL),
            token("geetest", "gt", "challenge", _PAGEURL),
            token("capy", "captchakey", _PAGEURL),
            token(
                "keycaptcha",
                "s_s_c_user_id",
                "s_s_c_session_id",
                "s_s_c_web_server_sign",
                "s_s_c_web_server_sign2",
                _PAGEURL,
            ),
            token("amazon_waf", _SITEKEY, "iv", "context", _PAGEURL),
            token("lemin", "captcha_id", "div_id", _PAGEURL),
            token("mtcaptcha", _SITEKEY, _PAGEURL),
            token("cutcaptcha", "misery_key", "api_key", _PAGEURL),
            token("datadome", "captcha_url", _PAGEURL),
            CaptchaMethod("textcaptcha", "text", (Param("textcaptcha"),)),
            image("base64", "body", "base64"),
            image("post", "file", "upload"),
        )
    }
)
# The worker's metric label per method: one dict lookup on the hot path.
METRIC_LABELS: Mapping[str, str] = MappingProxyType({m.name: m.metric_label for m in METHODS.values()})
# Each method's upload parameters (only ``post`` has one today).
UPLOADS: Mapping[str, tuple[str, ...]] = MappingProxyType({m.name: m.uploads for m in METHODS.values() if m.uploads})


def method_label(method: str) -> str:
    """The metric label of ``method``: its entry's, ``other`` for a method not in the table, ``unknown`` if empty."""
    if not method:
        return EMPTY_LABEL
    return METRIC_LABELS.get(method, OTHER_LABEL)


def first_poll_delays(scale: float = 1.0, default_s: float = DEFAULT_FIRST_POLL_DELAY_S) -> dict[str, float]:
    """``api.first_poll_delay_s`` from the table, times ``scale``: ``default`` plus each method that differs."""
    delays = {"default": default_s * scale}
    for m in METHODS.values():
        if m.first_poll_delay_s != DEFAULT_FIRST_POLL_DELAY_S:
            delays[m.name] = m.first_poll_delay_s * scale
    return delays


def solve_profiles(sigma: float | None = None) -> dict[str, tuple[float, float]]:
    """``{method: (median_s, sigma)}`` from the table (``sigma`` overrides every entry's): ``default`` plus each
    method whose solve time differs from it (the provider model turns these into distributions)."""
    default = (DEFAULT_SOLVE_MEDIAN_S, DEFAULT_SOLVE_SIGMA if sigma is None else sigma)
    profiles = {"default": default}
    for m in METHODS.values():
        if (m.solve_median_s, m.solve_sigma) != (DEFAULT_SOLVE_MEDIAN_S, DEFAULT_SOLVE_SIGMA):
            profiles[m.name] = (m.solve_median_s, m.solve_sigma if sigma is None else sigma)
    return profiles
