"""Retries with backoff for storage calls, and which errors are worth retrying.

A *transient* error (HTTP 408/429/5xx, throttling, a reset or refused connection, a timeout)
is retried with exponential backoff and full jitter; anything else (a missing object, no
permission, a bad request) is *permanent* and raised at once. The client libraries (gcsfs,
s3fs/botocore) retry some of these themselves; this layer sits above them so that every store,
and every error they give up on, is handled the same way.

Tuning, from the environment of the process (never from pipeline parameters):
``GOGGLES_STORAGE_MAX_ATTEMPTS`` (default 6) and ``GOGGLES_STORAGE_RETRY_DELAY_S`` (the first
delay, default 0.2 s, doubling up to 10 s).
"""

from __future__ import annotations

import errno
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: HTTP statuses that a later identical request may not get.
TRANSIENT_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

#: S3 / botocore error codes that mean "slow down" or "try again".
TRANSIENT_ERROR_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException",
    "RequestThrottled", "RequestLimitExceeded", "TooManyRequestsException",
    "ProvisionedThroughputExceededException", "RequestTimeout", "RequestTimeTooSkewed",
    "ServiceUnavailable", "InternalError", "BandwidthLimitExceeded", "PriorRequestNotComplete",
})

#: errno values of network trouble (and s3fs's translation of 503 / 500: EBUSY / EREMOTEIO).
TRANSIENT_ERRNO = frozenset({
    errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EPIPE,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETRESET, errno.EAGAIN, errno.EBUSY,
    getattr(errno, "EREMOTEIO", errno.EIO),
})

#: Exception class names (anywhere in the MRO) of the client libraries' network errors, matched
#: by name so that this module imports none of the optional libraries.
TRANSIENT_CLASS_NAMES = frozenset({
    "ClientConnectionError", "ClientOSError", "ServerDisconnectedError", "ClientPayloadError",
    "ServerTimeoutError", "ConnectionTimeoutError", "SocketTimeoutError",  # aiohttp
    "EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError",
    "ConnectTimeoutError", "ResponseStreamingError", "IncompleteReadError",  # botocore
    "ProxyError", "ChunkedEncodingError", "ContentDecodingError",  # requests (gcsfs: 502)
    "ChecksumError", "ProtocolError", "RemoteDisconnected", "IncompleteRead",
})

#: Never retried: the object is not there, or this identity may not touch it.
PERMANENT_TYPES: tuple[type[BaseException], ...] = (
    FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient error is retried.

    Attributes
    ----------
    max_attempts : calls in all (1 = no retry).
    initial_delay_s : the first backoff; each further one is ``multiplier`` times longer.
    max_delay_s : the longest single backoff.
    multiplier : growth of the backoff per attempt.
    """

    max_attempts: int = 6
    initial_delay_s: float = 0.2
    max_delay_s: float = 10.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.initial_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("retry delays must be non-negative")

    @classmethod
    def from_environment(cls) -> RetryPolicy:
        """The policy named by ``GOGGLES_STORAGE_MAX_ATTEMPTS`` / ``..._RETRY_DELAY_S``."""
        try:
            return cls(max_attempts=int(os.environ.get("GOGGLES_STORAGE_MAX_ATTEMPTS", 6)),
                       initial_delay_s=float(os.environ.get("GOGGLES_STORAGE_RETRY_DELAY_S",
                                                            0.2)))
        except ValueError as error:
            raise ValueError(f"bad GOGGLES_STORAGE_* retry setting: {error}; use a positive "
                             "integer for MAX_ATTEMPTS and seconds for RETRY_DELAY_S") from error

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Backoff before retry number ``attempt`` (1-based): full jitter in
        ``[0, min(max_delay_s, initial_delay_s * multiplier**(attempt-1))]``."""
        ceiling = min(self.max_delay_s, self.initial_delay_s * self.multiplier ** (attempt - 1))
        return (rng or random).uniform(0.0, ceiling)


def causes(error: BaseException, depth: int = 8) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from (``__cause__``/``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and depth > 0:
        yield current
        seen.add(id(current))
        depth -= 1
        current = current.__cause__ or current.__context__


def http_status(error: BaseException) -> int | None:
    """The HTTP status an error carries (gcsfs ``code``, aiohttp ``status``, botocore
    ``response``), or None."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    for name in ("code", "status"):
        value = getattr(error, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return value
    return None


def _error_code(error: BaseException) -> str | None:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def is_permission_error(error: BaseException) -> bool:
    """True when the store refused this identity (403, AccessDenied, gcsfs "Forbidden")."""
    for link in causes(error):
        if isinstance(link, PermissionError) or http_status(link) in (401, 403):
            return True
        if type(link) is OSError and str(link).startswith("Forbidden"):
            return True  # gcsfs raises a plain OSError("Forbidden: ...") for 403
    return False


def is_transient(error: BaseException) -> bool:
    """Whether retrying the same call may succeed.

    The first exception in the cause chain that says anything decides: a missing object or a
    refusal is permanent; a 408/429/5xx status, a throttling code, a reset/refused/timed-out
    connection or a client library's network error is transient.
    """
    for link in causes(error):
        if isinstance(link, PERMANENT_TYPES) or is_permission_error(link):
            return False
        code = _error_code(link)
        if code in TRANSIENT_ERROR_CODES:
            return True
        status = http_status(link)
        if status is not None:
            return status in TRANSIENT_HTTP_STATUS
        if isinstance(link, (ConnectionError, TimeoutError)):
            return True
        if any(cls.__name__ in TRANSIENT_CLASS_NAMES for cls in type(link).__mro__):
            return True
        if isinstance(link, OSError) and link.errno in TRANSIENT_ERRNO:
            return True
    return False


def call_with_retries(call: Callable[[], T], *, describe: str, policy: RetryPolicy,
                      give_up: Callable[[BaseException, int], BaseException],
                      sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``call``; retry it while it raises transient errors, at most ``policy.max_attempts``
    times in all.

    ``give_up(error, attempts)`` builds the exception raised for a permanent error
    (``attempts == 1`` after the first call) or for the last transient one; returning ``error``
    itself re-raises it unchanged.
    """
    attempt = 1
    while True:
        try:
            return call()
        except Exception as error:  # noqa: BLE001 - classified below, re-raised with context
            if not is_transient(error) or attempt >= policy.max_attempts:
                replacement = give_up(error, attempt)
                if replacement is error:
                    raise
                raise replacement from error
            delay = policy.delay(attempt)
            logger.warning("%s: transient %s: %s; retry %d of %d in %.2f s", describe,
                           type(error).__name__, _short(error), attempt,
                           policy.max_attempts - 1, delay)
            sleep(delay)
            attempt += 1


def _short(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "..."
