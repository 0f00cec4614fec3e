"""A CaptchaAI-compatible HTTP client: ``in.php`` submits, batched ``res.php`` polls, balance and reports.

One pooled ``requests.Session`` per process, timeouts on every call, and every failure turned into an
:class:`~captcha_fleet.contract.api_errors.ApiError` with its class, so callers decide retry versus result in one place.
The API key is sent in the request body or query only and never appears in exceptions or logs.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from captcha_fleet.contract.api_errors import NOT_READY, ApiError, ErrorClass, classify, is_error_answer
from captcha_fleet.contract.methods import UPLOADS

JsonScalar = str | int | float | bool
READ_TIMEOUT = "HTTP_READ_TIMEOUT"
# in.php took the request but did not answer in time: the CAPTCHA may be paid for, its id is unknown.
SUBMIT_UNCONFIRMED = "ERROR_SUBMIT_UNCONFIRMED"


class CaptchaApi:
    """Talks to ``{base}/in.php`` and ``{base}/res.php``."""

    def __init__(
        self,
        base: str,
        key: str,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        pool_size: int = 32,
        submit_read_timeout_s: float | None = None,
    ) -> None:
        self.base = base.rstrip("/")
        self._key = key
        self.timeout = (connect_timeout_s, read_timeout_s)
        # in.php gets longer: giving up on a submit the provider may have accepted risks paying twice.
        self.submit_timeout = (connect_timeout_s, max(read_timeout_s, submit_read_timeout_s or read_timeout_s))
        self.session = requests.Session()
        # Only connection failures are retried by urllib3, and only for the idempotent GETs:
        # a re-sent in.php POST could pay for the same CAPTCHA twice.
        get_retry = Retry(total=2, connect=2, read=0, status=0, backoff_factor=0.05, allowed_methods={"GET"})
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=get_retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.requests_sent: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        # Called with (endpoint, outcome) after every request, e.g. to feed Prometheus counters.
        self.observer: Callable[[str, str], None] | None = None

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()

    # --- the protocol ----------------------------------------------------------------------------
    def submit(self, method: str, params: Mapping[str, JsonScalar]) -> str:
        """Send one CAPTCHA to ``in.php``; return the provider's CAPTCHA id."""
        data: dict[str, str] = {k: _form_value(v) for k, v in params.items()}
        # A method's upload (post's ``file``, see the method table) goes as a multipart file, not a form field.
        uploads = UPLOADS.get(method, ())
        files = {n: ("captcha.png", _decode_file(data.pop(n, "")), "application/octet-stream") for n in uploads} or None
        data.update({"key": self._key, "method": method, "json": "1"})
        try:
            answer = self._call("in", "POST", "/in.php", data=data, files=files, timeout=self.submit_timeout)
        except ApiError as exc:
            if exc.code == READ_TIMEOUT:
                # The request arrived and may have been accepted (and charged): resending could pay twice.
                raise ApiError(ErrorClass.TASK, SUBMIT_UNCONFIRMED) from None
            raise
        if not answer:
            raise ApiError(ErrorClass.CAPACITY, "EMPTY_ANSWER")
        return answer

    def poll_many(self, captcha_ids: Sequence[str]) -> list[str]:
        """Ask ``res.php`` for many CAPTCHAs in one request; one answer per id, in order.

        Each answer is a token, :data:`~captcha_fleet.contract.api_errors.NOT_READY`, or an error code.
        """
        if not captcha_ids:
            return []
        if len(captcha_ids) == 1:
            params = {"key": self._key, "action": "get", "id": captcha_ids[0], "json": "1"}
        else:
            params = {"key": self._key, "action": "get", "ids": ",".join(captcha_ids), "json": "1"}
        _status, answer = self._call_raw("res", "GET", "/res.php", params=params)
        parts = answer.split("|")
        if len(parts) == 1 and is_error_answer(answer):
            # One error for the whole request: about the account or capacity (raise), or about the ids.
            if classify(answer) is not ErrorClass.TASK:
                raise ApiError(classify(answer), answer)
            return [answer] * len(captcha_ids)
        if len(parts) != len(captcha_ids):
            # An answer holds a "|" itself (a text CAPTCHA can): ask for each id alone, where none is split.
            return [self._poll_one(captcha_id) for captcha_id in captcha_ids]
        return parts

    def _poll_one(self, captcha_id: str) -> str:
        params = {"key": self._key, "action": "get", "id": captcha_id, "json": "1"}
        _status, answer = self._call_raw("res", "GET", "/res.php", params=params)
        if is_error_answer(answer) and classify(answer) is not ErrorClass.TASK:
            raise ApiError(classify(answer), answer)
        return answer

    def balance(self) -> float:
        """The account balance from ``action=getbalance``."""
        params = {"key": self._key, "action": "getbalance", "json": "1"}
        answer = self._call("balance", "GET", "/res.php", params=params)
        try:
            return float(answer)
        except ValueError:
            raise ApiError(ErrorClass.CAPACITY, "MALFORMED_BALANCE") from None

    def report(self, captcha_id: str, good: bool) -> None:
        """Tell the provider whether an answer was right (``reportgood`` / ``reportbad``)."""
        action = "reportgood" if good else "reportbad"
        params = {"key": self._key, "action": action, "id": captcha_id, "json": "1"}
        self._call("report", "GET", "/res.php", params=params)

    # --- transport ---------------------------------------------------------------------------------
    def _call(self, endpoint: str, http_method: str, path: str, **kwargs: Any) -> str:
        """A call whose only good answer has status 1 (submit, balance, report)."""
        status, answer = self._call_raw(endpoint, http_method, path, **kwargs)
        if status != 1:
            # A NOT_READY or any other non-error text where a value was due is a confused server.
            error_class = classify(answer) if is_error_answer(answer) else ErrorClass.CAPACITY
            raise ApiError(error_class, answer or "EMPTY_ANSWER")
        return answer

    def _call_raw(self, endpoint: str, http_method: str, path: str, **kwargs: Any) -> tuple[int, str]:
        """One HTTP request, counted by endpoint and outcome for the metrics."""
        with self._count_lock:
            self.requests_sent[endpoint] += 1
        try:
            status, answer = self._request(http_method, path, **kwargs)
        except ApiError as exc:
            self._observe(endpoint, f"{exc.error_class.value}_error")
            raise
        if status == 1:
            outcome = "ok"
        elif answer == NOT_READY:
            outcome = "not_ready"
        else:
            outcome = f"{classify(answer).value}_error" if is_error_answer(answer) else "other"
        self._observe(endpoint, outcome)
        return status, answer

    def _observe(self, endpoint: str, outcome: str) -> None:
        if self.observer is not None:
            self.observer(endpoint, outcome)

    def _request(self, http_method: str, path: str, **kwargs: Any) -> tuple[int, str]:
        """One HTTP request; returns ``(status, request)`` from the JSON body or raises ApiError."""
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self.session.request(http_method, self.base + path, **kwargs)
        except requests.ReadTimeout:
            raise ApiError(ErrorClass.CAPACITY, READ_TIMEOUT) from None
        except requests.Timeout:
            raise ApiError(ErrorClass.CAPACITY, "HTTP_TIMEOUT") from None
        except requests.RequestException as exc:
            raise ApiError(ErrorClass.CAPACITY, f"HTTP_{type(exc).__name__.upper()}") from None
        if response.status_code in (401, 403):
            raise ApiError(ErrorClass.FATAL, f"HTTP_{response.status_code}")
        if response.status_code >= 400:
            raise ApiError(ErrorClass.CAPACITY, f"HTTP_{response.status_code}")
        return parse_answer(response.text)


def parse_answer(body: str) -> tuple[int, str]:
    """Parse a ``json=1`` answer body into ``(status, request)``.

    HTML pages and other junk are capacity errors (a proxy or the provider is overloaded), not task
    failures. Plain-text answers (``OK|id``, ``CAPCHA_NOT_READY``) are accepted too.
    """
    text = body.strip()
    if text.startswith("{"):
        try:
            payload = json.loads(text)
        except ValueError:
            raise ApiError(ErrorClass.CAPACITY, "MALFORMED_JSON") from None
        if not isinstance(payload, dict):
            raise ApiError(ErrorClass.CAPACITY, "MALFORMED_JSON")
        status = payload.get("status")
        request = payload.get("request")
        status_ok = isinstance(status, int) and not isinstance(status, bool)
        if not status_ok or not isinstance(request, str | int | float):
            raise ApiError(ErrorClass.CAPACITY, "MALFORMED_JSON")
        return (1 if status == 1 else 0), str(request)
    if text.startswith("OK|"):
        return 1, text[3:]
    if text == NOT_READY or (text and is_error_answer(text) and len(text) < 200 and "<" not in text):
        return 0, text
    raise ApiError(ErrorClass.CAPACITY, "NON_JSON_ANSWER")


def _form_value(value: JsonScalar) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _decode_file(encoded: str) -> bytes:
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(ErrorClass.TASK, "ERROR_BAD_FILE_BASE64") from None
