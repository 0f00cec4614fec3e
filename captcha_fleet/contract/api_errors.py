"""The three error classes of the CaptchaAI protocol and how an answer is sorted into one.

*Fatal* errors concern the account (stop claiming, keep tasks queued); *capacity* errors are the service
being busy or unreachable (back off, retry, never fail the task); *task* errors concern one CAPTCHA (the
task gets an error result).
"""

from __future__ import annotations

import enum

NOT_READY = "CAPCHA_NOT_READY"

FATAL_CODES = frozenset(
    {
        "ERROR_WRONG_USER_KEY",
        "ERROR_KEY_DOES_NOT_EXIST",
        "IP_BANNED",
        "ERROR_IP_NOT_ALLOWED",
        "ERROR_IP_BANNED",
    }
)
CAPACITY_CODES = frozenset(
    {
        "ERROR_NO_SLOT_AVAILABLE",
        # On CaptchaAI this means "no free threads on your plan", not "no money".
        "ERROR_ZERO_BALANCE",
        "MAX_USER_TURN",
        "ERROR_TOO_MUCH_REQUESTS",
    }
)


class ErrorClass(enum.StrEnum):
    """How the worker reacts to an error."""

    FATAL = "fatal"
    CAPACITY = "capacity"
    TASK = "task"


class ApiError(Exception):
    """An error answer (or transport failure) from the API, already classified."""

    def __init__(self, error_class: ErrorClass, code: str) -> None:
        super().__init__(f"{error_class.value}: {code}")
        self.error_class = error_class
        self.code = code


# Failures of the exchange itself rather than answers (the client raises them as CAPACITY, so they are retried
# with back-off): a server error, a timeout, an answer that is not one. Counted apart from the provider's own
# capacity refusals (see :func:`error_kind`).
TRANSPORT_PREFIX = "HTTP_"
TRANSPORT_CODES = frozenset({"EMPTY_ANSWER", "MALFORMED_JSON", "NON_JSON_ANSWER"})
TRANSPORT = "transport"
# The API-error counters a worker's heartbeat carries and the controller reads, in this order.
ERROR_KINDS = (ErrorClass.CAPACITY.value, ErrorClass.FATAL.value, ErrorClass.TASK.value, TRANSPORT)


def classify(code: str) -> ErrorClass:
    """Sort an error code from ``request`` into its class.

    ``ERROR: 1001`` .. ``ERROR: 1005`` are CaptchaAI's rate and capacity limits; any other ``ERROR_...``
    is about the task itself (unsolvable, bad parameters, bad image).
    """
    code = code.strip()
    if code in FATAL_CODES:
        return ErrorClass.FATAL
    if code in CAPACITY_CODES or code.startswith("ERROR: 100"):
        return ErrorClass.CAPACITY
    return ErrorClass.TASK


def is_error_answer(answer: str) -> bool:
    """Whether a ``request`` value is an error rather than an id, a token or NOT_READY."""
    return answer.startswith(("ERROR", "IP_BANNED", "MAX_USER_TURN"))


def error_kind(exc: ApiError) -> str:
    """The counter an API error goes to: its class, or ``transport`` for a retried failure of the exchange.

    The controller freezes scale-up on capacity errors fleet-wide (the provider refuses more work). A congested
    provider's 2 % of polls that answer 5xx are no such refusal: counted as capacity, two of them in a small
    fleet's rate window froze scale-up for a minute at a burst's start (builtin:short on the congested profile,
    P95 92 s against the simulator's 56 s).
    """
    if exc.error_class is ErrorClass.CAPACITY and (
        exc.code.startswith(TRANSPORT_PREFIX) or exc.code in TRANSPORT_CODES
    ):
        return TRANSPORT
    return exc.error_class.value
