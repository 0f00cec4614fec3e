"""The sandbox's account, plan and captcha store: the whole protocol logic, with no HTTP in sight.

Solves are not threads or timers. Each accepted captcha stores the instant it becomes ready, and every
request first advances the store to "now": a min-heap of ready-at times says how many solves are still
in flight (what a thread-limited plan counts), a second heap of expiry times forgets old answers. That
keeps thousands of solves in flight at the cost of a few heap operations per request, and lets tests
drive time with an injected clock instead of sleeping.

One account: every accepted key shares the balance and the plan's threads, like a fleet sharing one key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from captcha_fleet.apps.sandbox.config import FAULT_KINDS, SandboxConfig
from captcha_fleet.contract.methods import METHODS

Clock = Callable[[], float]

NOT_READY = "CAPCHA_NOT_READY"  # sic: the real API spells it this way
REPORT_RECORDED = "OK_REPORT_RECORDED"
OVER_POLLED = "ERROR: 1005"
MAX_IMAGE_BYTES = 1024 * 1024


COUNTERS: tuple[str, ...] = (
    "requests_total",
    "in_php",
    "res_php",
    "res_ids_polled",
    "getbalance",
    "reports_bad",
    "reports_good",
    "accepted",
    "refused_no_slot",
    "refused_balance",
    "rejected_params",
    "rejected_key",
    "solved",
    "unsolvable",
    "over_polled",
)


@dataclass(frozen=True, slots=True)
class Reply:
    """One API answer: ``status``/``request`` for ``json=1``, ``text`` for the plain-text protocol."""

    status: int
    request: str
    text: str

    @classmethod
    def error(cls, code: str) -> Reply:
        """A refusal or error: the code alone, in both forms."""
        return cls(0, code, code)

    @classmethod
    def ok(cls, value: str) -> Reply:
        """A success answered as ``OK|value`` in plain text (captcha ids, tokens)."""
        return cls(1, value, f"OK|{value}")

    @classmethod
    def plain(cls, status: int, value: str) -> Reply:
        """An answer whose plain-text form is the bare value (balance, reports, batch polls)."""
        return cls(status, value, value)


@dataclass(slots=True)
class Captcha:
    """One accepted captcha; its state is a function of the clock, never of a running task."""

    id: str
    method: str
    ready_at: float
    expires_at: float
    unsolvable: bool
    price: float
    token: str
    polls: int = 0
    handed_out: bool = False


def check_params(method: str, params: Mapping[str, str], files: Mapping[str, bytes]) -> str | None:
    """The error code for a submit with missing or malformed parameters, or None when it is acceptable.

    The method table says which methods exist, what each requires and the code a missing one is answered with;
    an image parameter is checked as the image it carries (base64 in a form field, or an uploaded file).
    """
    entry = METHODS.get(method)
    if entry is None:
        return "ERROR_BAD_PARAMETERS"
    for param in entry.required:
        if param.image == "upload":
            problem = _check_image_bytes(files.get(param.name, b""))
        elif param.image == "base64":
            problem = _check_image_base64(params.get(param.name, ""))
        else:
            problem = None if params.get(param.name, "").strip() else param.missing_error
        if problem is not None:
            return problem
    return None


def _check_image_base64(body: str) -> str | None:
    compact = "".join(body.split())
    if not compact:
        return "ERROR_ZERO_CAPTCHA_FILESIZE"
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return "ERROR_IMAGE_TYPE_NOT_SUPPORTED"
    return _check_image_bytes(data)


def _check_image_bytes(data: bytes) -> str | None:
    if not data:
        return "ERROR_ZERO_CAPTCHA_FILESIZE"
    if len(data) > MAX_IMAGE_BYTES:
        return "ERROR_TOO_BIG_CAPTCHA_FILESIZE"
    return None


def format_balance(balance: float) -> str:
    """Balance as the real API prints it: a plain decimal, no exponent, no trailing zeros."""
    text = f"{balance:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


class Sandbox:
    """The fake account and its captchas. Thread-safe: one lock around all state, held for microseconds."""

    def __init__(self, config: SandboxConfig | None = None, clock: Clock = time.monotonic) -> None:
        self._config = config or SandboxConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self._rng = random.Random(self._config.seed)
        # Round trips get their own dice, so a profile with latency draws the same solves as one without.
        self._latency_rng = random.Random(f"latency:{self._config.seed}")
        self._provider = self._config.provider_model()
        # Ids keep counting across resets so an old id can never name a new captcha.
        self._next_id = 70_000_000_000 + self._rng.randrange(1_000_000_000)
        self._salt = f"{self._rng.getrandbits(64):016x}"
        self._reset_state()

    # --- configuration ----------------------------------------------------------------------

    @property
    def config(self) -> SandboxConfig:
        """The settings in effect now."""
        return self._config

    def update(self, data: Mapping[str, Any]) -> SandboxConfig:
        """Change settings at runtime; ``balance`` sets the current balance, ``seed`` reseeds the dice."""
        with self._lock:
            new = self._config.updated(data, where="config")
            if "balance" in data:
                self._balance = new.balance
            if "seed" in data:
                self._rng.seed(new.seed)
                self._latency_rng.seed(f"latency:{new.seed}")
            self._config = new
            self._provider = new.provider_model()
            return new

    def reset(self) -> None:
        """Zero the counters, forget every captcha and refill the balance from the config."""
        with self._lock:
            self._rng.seed(self._config.seed)
            self._latency_rng.seed(f"latency:{self._config.seed}")
            self._reset_state()

    def _reset_state(self) -> None:
        self._captchas: dict[str, Captcha] = {}
        self._running: list[tuple[float, str]] = []  # (ready_at, id) of solves still in flight
        self._expiring: list[tuple[float, str]] = []  # (expires_at, id) of every stored captcha
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._faults = dict.fromkeys(FAULT_KINDS, 0)
        self._max_in_flight = 0
        self._accepted_per_page: dict[str, list[str]] = {}
        self._balance = self._config.balance
        self._spent = 0.0

    # --- bookkeeping the HTTP layer reports -------------------------------------------------

    def note_request(self, endpoint: str) -> None:
        """Count one HTTP request (``in.php``, ``res.php`` or anything else)."""
        with self._lock:
            self._counters["requests_total"] += 1
            if endpoint == "in.php":
                self._counters["in_php"] += 1
            elif endpoint == "res.php":
                self._counters["res_php"] += 1

    def round_trip_s(self) -> float:
        """How long the HTTP layer holds one API request before answering (wall seconds): the provider's
        round trip, scaled like its solves."""
        if not self._provider.http_latency_s and not self._provider.http_jitter_s:
            return 0.0
        with self._lock:
            return self._provider.round_trip_s(self._latency_rng) * self._config.time_scale

    def note_fault(self, kind: str) -> None:
        """Count one injected fault."""
        with self._lock:
            self._faults[kind] = self._faults.get(kind, 0) + 1

    # --- the API ------------------------------------------------------------------------------

    def check_key(self, key: str) -> str | None:
        """The account error for ``key``, or None when it is accepted."""
        config = self._config
        if not key:
            return "ERROR_KEY_DOES_NOT_EXIST"
        if key in config.banned_keys:
            return "IP_BANNED"
        if key in config.reject_keys or (config.accept_keys is not None and key not in config.accept_keys):
            return "ERROR_WRONG_USER_KEY"
        return None

    def submit(self, params: Mapping[str, str], files: Mapping[str, bytes] | None = None) -> Reply:
        """``in.php``: accept a captcha (charging for it) or say why not."""
        key_error = self.check_key(params.get("key", ""))
        if key_error is not None:
            return self._refuse("rejected_key", key_error)
        method = params.get("method", "")
        param_error = check_params(method, params, files or {})
        if param_error is not None:
            return self._refuse("rejected_params", param_error)
        with self._lock:
            now = self._clock()
            self._advance(now)
            config = self._config
            if config.threads is not None and len(self._running) >= config.threads:
                self._counters["refused_no_slot"] += 1
                return Reply.error("ERROR_NO_SLOT_AVAILABLE")
            price = config.price_for(method)
            if self._balance + 1e-9 < price:
                self._counters["refused_balance"] += 1
                return Reply.error("ERROR_ZERO_BALANCE")
            captcha = self._new_captcha(method, params, now, price)
            self._balance = round(self._balance - price, 9)
            self._spent = round(self._spent + price, 9)
            self._captchas[captcha.id] = captcha
            heapq.heappush(self._running, (captcha.ready_at, captcha.id))
            heapq.heappush(self._expiring, (captcha.expires_at, captcha.id))
            self._counters["accepted"] += 1
            self._accepted_per_page.setdefault(params.get("pageurl", ""), []).append(captcha.id)
            self._max_in_flight = max(self._max_in_flight, len(self._running))
            return Reply.ok(captcha.id)

    def result(self, params: Mapping[str, str]) -> Reply:
        """``res.php``: dispatch on ``action`` (get, getbalance, reportbad, reportgood)."""
        key_error = self.check_key(params.get("key", ""))
        if key_error is not None:
            return self._refuse("rejected_key", key_error)
        action = params.get("action", "")
        if action == "get":
            if params.get("ids"):
                return self.get_many([i.strip() for i in params["ids"].split(",")])
            return self.get(params.get("id", "").strip())
        if action == "getbalance":
            with self._lock:
                self._counters["getbalance"] += 1
                return Reply.plain(1, format_balance(self._balance))
        if action in ("reportbad", "reportgood"):
            return self.report(params.get("id", "").strip(), good=action == "reportgood")
        return self._refuse("rejected_params", "ERROR_BAD_PARAMETERS")

    def get(self, captcha_id: str) -> Reply:
        """The answer for one captcha id."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            self._counters["res_ids_polled"] += 1
            return self._answer(captcha_id, now)

    def get_many(self, captcha_ids: Sequence[str]) -> Reply:
        """Answers for many ids, ``|``-joined in order; status 1 when any of them is ready."""
        with self._lock:
            now = self._clock()
            self._advance(now)
            self._counters["res_ids_polled"] += len(captcha_ids)
            answers = [self._answer(i, now) for i in captcha_ids]
        joined = "|".join(a.request for a in answers)
        return Reply.plain(1 if any(a.status == 1 for a in answers) else 0, joined)

    def report(self, captcha_id: str, good: bool) -> Reply:
        """``reportgood``/``reportbad``: recorded for any captcha still stored."""
        with self._lock:
            self._advance(self._clock())
            if captcha_id not in self._captchas:
                return Reply.error("ERROR_WRONG_CAPTCHA_ID")
            self._counters["reports_good" if good else "reports_bad"] += 1
            return Reply.plain(1, REPORT_RECORDED)

    def accepted_per_page(self) -> dict[str, int]:
        """Accepted (paid) submits by ``pageurl``: a test gives each task its own page to count its payments."""
        with self._lock:
            return {page: len(ids) for page, ids in self._accepted_per_page.items()}

    def polls_per_payment(self) -> dict[str, list[int]]:
        """For each ``pageurl``, how often each of its paid CAPTCHAs was polled, in the order they were paid.

        A CAPTCHA never polled is one whose id its client never learnt or never kept.
        """
        with self._lock:
            return {
                page: [self._captchas[i].polls if i in self._captchas else -1 for i in ids]
                for page, ids in self._accepted_per_page.items()
            }

    def stats(self) -> dict[str, Any]:
        """Counters since start or the last reset, plus the live in-flight count and balance."""
        with self._lock:
            self._advance(self._clock())
            out: dict[str, Any] = dict(self._counters)
            out.update(
                in_flight=len(self._running),
                max_in_flight=self._max_in_flight,
                stored=len(self._captchas),
                threads=self._config.threads,
                balance=round(self._balance, 9),
                spent=round(self._spent, 9),
                faults=dict(self._faults),
            )
            return out

    # --- internals (call with the lock held) -------------------------------------------------

    def _refuse(self, counter: str, code: str) -> Reply:
        with self._lock:
            self._counters[counter] += 1
        return Reply.error(code)

    def _new_captcha(self, method: str, params: Mapping[str, str], now: float, price: float) -> Captcha:
        config = self._config
        # The solves already in flight slow this one down on a congested provider (1.0 on the others).
        load = self._provider.load_factor(len(self._running), config.threads)
        solve_s = config.solve_time_for(method).draw(self._rng) * load * config.time_scale
        unsolvable = self._rng.random() < config.unsolvable_rate_for(method)
        captcha_id = str(self._next_id)
        self._next_id += 1
        site = params.get("googlekey") or params.get("sitekey") or params.get("publickey") or ""
        digest = hashlib.sha256(f"{self._salt}:{captcha_id}:{method}:{site}".encode()).hexdigest()[:16]
        ready_at = now + solve_s
        token = f"sandbox-token-{captcha_id}-{digest}"
        if config.answer_separator_rate and self._rng.random() < config.answer_separator_rate:
            token = f"sandbox|text|{captcha_id}"
        return Captcha(
            id=captcha_id,
            method=method,
            ready_at=ready_at,
            expires_at=ready_at + config.retention_wall_s(),
            unsolvable=unsolvable,
            price=price,
            token=token,
        )

    def _advance(self, now: float) -> None:
        """Finish the solves whose time has come (refunding unsolvable ones) and forget expired answers."""
        while self._running and self._running[0][0] <= now:
            _, captcha_id = heapq.heappop(self._running)
            captcha = self._captchas.get(captcha_id)
            if captcha is not None and captcha.unsolvable:
                self._balance = round(self._balance + captcha.price, 9)
                self._spent = round(self._spent - captcha.price, 9)
                self._counters["unsolvable"] += 1
        while self._expiring and self._expiring[0][0] <= now:
            _, captcha_id = heapq.heappop(self._expiring)
            self._captchas.pop(captcha_id, None)

    def _answer(self, captcha_id: str, now: float) -> Reply:
        captcha = self._captchas.get(captcha_id) if captcha_id else None
        if captcha is None:
            return Reply.error("ERROR_WRONG_CAPTCHA_ID")
        captcha.polls += 1
        limit = self._config.max_polls_per_captcha
        if limit is not None and captcha.polls > limit:
            self._counters["over_polled"] += 1
            return Reply.error(OVER_POLLED)
        if now < captcha.ready_at:
            return Reply.plain(0, NOT_READY)
        if captcha.unsolvable:
            return Reply.error("ERROR_CAPTCHA_UNSOLVABLE")
        if not captcha.handed_out:
            captcha.handed_out = True
            self._counters["solved"] += 1
        return Reply.ok(captcha.token)
