"""One error taxonomy for the whole service.

Every failure that crosses a module boundary is one of three kinds, so callers decide what to do
without knowing where it came from:

- ``TransientError``: try again later (a timeout, a 429, a 503, a lock); the outbox retries it.
- ``PermanentError``: retrying will not help (a 400, a bad address); the outbox dead-letters it.
- ``OutcomeUnknown``: a delivery may have happened; the outbox reconciles before any resend.
- ``BadRecord``: one input record cannot be used; it is quarantined and the sync goes on.
- ``ConfigError``: the configuration is wrong; startup stops and lists every problem.
"""

from __future__ import annotations

from dataclasses import dataclass


class CasebridgeError(Exception):
    """Base of every error casebridge raises on purpose."""


class TransientError(CasebridgeError):
    """Retriable: the same call may succeed later."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OutcomeUnknown(CasebridgeError):
    """The call may or may not have taken effect (a timeout after the request left).

    Never retried blindly: the outbox asks the target's `reconcile` first.
    """


class PermanentError(CasebridgeError):
    """Not retriable: the same call will fail the same way."""


class BadRecord(CasebridgeError):
    """One source record failed validation or mapping; it goes to quarantine with this reason."""

    def __init__(self, reason: str, detail: str = "", ref: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        # The key of the missing record this one refers to (a student id or number), so the
        # quarantine can name the quarantined row that caused it.
        self.ref = ref


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.problem}"


class ConfigError(CasebridgeError):
    """The configuration cannot be used; carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class AddressRejected(PermanentError):
    """The provider refused this address for good: an invalid number (Twilio 21211, 21614) or a
    recipient who opted out at the carrier (21610). Never retried to the same address: the
    outbox records it on the contact, and a rejected (not opted-out) address lets the next plan
    choose another channel.
    """

    def __init__(
        self, message: str, medium: str, address: str, opted_out: bool, code: str = ""
    ) -> None:
        super().__init__(message)
        self.medium = medium
        self.address = address
        self.opted_out = opted_out
        self.code = code
