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
