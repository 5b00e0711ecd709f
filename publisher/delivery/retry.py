"""Deliver one batch: retry transient failures with backoff, split batches too large, give up per the policy."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from publisher.delivery.accounting import Tally
from publisher.delivery.config import RetryPolicy
from publisher.delivery.items import INTERRUPTED, Line, Outcome, Undelivered, span
from publisher.delivery.transport import Rejected, Retryable, TooLarge, Transport


class Interrupted(Exception):
    """Raised out of a backoff wait once the run is stopping."""


def backoff(policy: RetryPolicy) -> wait_base:
    """Exponential backoff with equal jitter: half the step fixed, half random.

    step = min(backoff_max, backoff_initial * 2^n); the jitter spreads many publishers that failed
    together, the fixed half keeps the growth.
    """
    half_initial, half_max = policy.backoff_initial / 2, policy.backoff_max / 2
    return wait_exponential(multiplier=half_initial, max=half_max) + wait_random_exponential(
        multiplier=half_initial, max=half_max
    )


def _failure(state: RetryCallState) -> Retryable:
    assert state.outcome is not None
    exc = state.outcome.exception()
    assert isinstance(exc, Retryable)
    return exc


class Sender:
    """Delivers one batch through a transport; safe to call from several threads."""

    def __init__(
        self,
        transport: Transport,
        tally: Tally,
        policy: RetryPolicy,
        *,
        stop: threading.Event | None = None,
        log: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.transport = transport
        self.tally = tally
        self.policy = policy
        self.backoff = backoff(policy)
        self.stop = stop or threading.Event()
        self.log = log

    def deliver(self, lines: list[Line]) -> list[Outcome]:
        """One outcome per line, in order."""
        if not lines:
            return []
        retrying = Retrying(
            retry=retry_if_exception_type(Retryable),
            stop=stop_after_attempt(self.policy.max_retries + 1) | stop_before_delay(self.policy.max_retry_seconds),
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=lambda state: self._before_retry(lines, state),
            retry_error_callback=lambda state: self._give_up(lines, state),
        )
        try:
            outcomes: list[Outcome] = list(retrying(self._attempt, lines))
        except TooLarge as exc:
            return self._split(lines, exc)
        except Rejected as exc:
            self.log(f"giving up on lines {span(lines)}: {exc.detail}")
            return [Undelivered(exc.reason)] * len(lines)
        except Interrupted:
            return [Undelivered(INTERRUPTED)] * len(lines)
        return outcomes

    def _attempt(self, lines: list[Line]) -> list[Outcome]:
        self.tally.add_request()
        return list(self.transport.send(lines))

    def _wait(self, state: RetryCallState) -> float:
        """The backoff step, or longer when the other side asked for it (Retry-After)."""
        return max(_failure(state).retry_after or 0.0, self.backoff(state))

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Interrupted

    def _before_retry(self, lines: list[Line], state: RetryCallState) -> None:
        failure, delay = _failure(state).detail, state.upcoming_sleep
        self.log(f"lines {span(lines)}: {failure}; retry {state.attempt_number} in {delay:.2f}s")
        self.tally.add_retry(len(lines))

    def _give_up(self, lines: list[Line], state: RetryCallState) -> list[Outcome]:
        if self.stop.is_set():
            return [Undelivered(INTERRUPTED)] * len(lines)
        failure = _failure(state)
        self.log(f"giving up on lines {span(lines)} after {state.attempt_number} attempt(s): {failure.detail}")
        return [Undelivered(failure.reason)] * len(lines)

    def _split(self, lines: list[Line], exc: TooLarge) -> list[Outcome]:
        if len(lines) == 1:
            self.log(f"giving up on line {lines[0].number}: too large even alone {exc.detail}")
            return [Undelivered(exc.reason)]
        self.tally.add_split()
        middle = len(lines) // 2
        return self.deliver(lines[:middle]) + self.deliver(lines[middle:])
