"""goggles.io.retries: which errors are transient, backoff, and the retry loop."""

from __future__ import annotations

import errno

import pytest

from goggles.io import retries

# Real exceptions of the client libraries (the gcs and s3 extras).
gcsfs_retry = pytest.importorskip("gcsfs.retry")
s3fs_errors = pytest.importorskip("s3fs.errors")
aiohttp = pytest.importorskip("aiohttp")
botocore_exceptions = pytest.importorskip("botocore.exceptions")
requests_exceptions = pytest.importorskip("requests.exceptions")


def client_error(code: str, status: int) -> botocore_exceptions.ClientError:
    return botocore_exceptions.ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject")


def chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as error:
            raise outer from error
    except BaseException as raised:
        return raised


TRANSIENT = {
    "gcsfs 503": gcsfs_retry.HttpError({"code": 503, "message": "backend error"}),
    "gcsfs 429": gcsfs_retry.HttpError({"code": 429, "message": "rate limit"}),
    "gcsfs 502 (ProxyError)": requests_exceptions.ProxyError(),
    "botocore SlowDown": client_error("SlowDown", 503),
    "botocore 500": client_error("InternalError", 500),
    "s3fs translated 503": s3fs_errors.translate_boto_error(client_error("SlowDown", 503)),
    "aiohttp disconnect": aiohttp.ServerDisconnectedError(),
    "aiohttp cut-off body": aiohttp.ClientPayloadError("Response payload is not completed"),
    "connection reset": ConnectionResetError(errno.ECONNRESET, "reset by peer"),
    "errno ECONNRESET": OSError(errno.ECONNRESET, "reset"),
    "timeout": TimeoutError(),
    "botocore endpoint": botocore_exceptions.EndpointConnectionError(endpoint_url="http://x"),
    "wrapped reset": chained(RuntimeError("read failed"), ConnectionResetError()),
}

PERMANENT = {
    "missing": FileNotFoundError("gs://b/x"),
    "permission": PermissionError("denied"),
    "gcsfs 403": OSError("Forbidden: b/x\nno access"),
    "gcsfs 400": gcsfs_retry.HttpError({"code": 400, "message": "bad"}),
    "botocore AccessDenied": client_error("AccessDenied", 403),
    "s3fs translated NoSuchKey": s3fs_errors.translate_boto_error(client_error("NoSuchKey", 404)),
    "bad request": ValueError("Bad Request: b/x"),
    "missing, raised from a reset": chained(FileNotFoundError("x"), ConnectionResetError()),
    "programming error": TypeError("unsupported operand"),
}


@pytest.mark.parametrize("name", sorted(TRANSIENT))
def test_transient_errors_are_retried(name: str) -> None:
    assert retries.is_transient(TRANSIENT[name])


@pytest.mark.parametrize("name", sorted(PERMANENT))
def test_permanent_errors_are_not_retried(name: str) -> None:
    assert not retries.is_transient(PERMANENT[name])


def test_permission_errors_are_recognised_in_every_dialect() -> None:
    assert retries.is_permission_error(PERMANENT["permission"])
    assert retries.is_permission_error(PERMANENT["gcsfs 403"])
    assert retries.is_permission_error(PERMANENT["botocore AccessDenied"])
    assert retries.is_permission_error(
        s3fs_errors.translate_boto_error(client_error("AccessDenied", 403)))
    assert not retries.is_permission_error(PERMANENT["missing"])
    assert not retries.is_permission_error(TRANSIENT["gcsfs 503"])


def test_backoff_grows_and_is_capped() -> None:
    policy = retries.RetryPolicy(max_attempts=10, initial_delay_s=0.1, max_delay_s=1.0)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert 0.0 <= min(delays) and max(delays) <= ceiling
        assert max(delays) > ceiling / 2  # full jitter reaches up to the ceiling


def test_policy_validation_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        retries.RetryPolicy(max_attempts=0)
    monkeypatch.setenv("GOGGLES_STORAGE_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("GOGGLES_STORAGE_RETRY_DELAY_S", "0.5")
    assert retries.RetryPolicy.from_environment() == retries.RetryPolicy(3, 0.5)
    monkeypatch.setenv("GOGGLES_STORAGE_MAX_ATTEMPTS", "many")
    with pytest.raises(ValueError, match="GOGGLES_STORAGE"):
        retries.RetryPolicy.from_environment()


class Flaky:
    """Raises the given errors in turn, then returns ``"ok"``."""

    def __init__(self, *errors: BaseException):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


class GaveUp(Exception):
    pass


def give_up(error: BaseException, attempts: int) -> BaseException:
    return GaveUp(f"{type(error).__name__} after {attempts}")


def test_transient_failures_are_retried_with_backoff() -> None:
    call, slept = Flaky(ConnectionResetError(), TRANSIENT["gcsfs 503"]), []
    policy = retries.RetryPolicy(max_attempts=5, initial_delay_s=0.01)
    assert retries.call_with_retries(call, describe="read x", policy=policy, give_up=give_up,
                                     sleep=slept.append) == "ok"
    assert call.calls == 3 and len(slept) == 2 and all(0 <= s <= 0.02 for s in slept)


def test_permanent_failure_is_raised_at_once() -> None:
    call, slept = Flaky(FileNotFoundError("x")), []
    with pytest.raises(GaveUp, match="FileNotFoundError after 1"):
        retries.call_with_retries(call, describe="read x", policy=retries.RetryPolicy(),
                                  give_up=give_up, sleep=slept.append)
    assert call.calls == 1 and slept == []


def test_retries_stop_after_max_attempts() -> None:
    call = Flaky(*[TimeoutError()] * 10)
    with pytest.raises(GaveUp, match="TimeoutError after 4"):
        retries.call_with_retries(call, describe="read x",
                                  policy=retries.RetryPolicy(max_attempts=4),
                                  give_up=give_up, sleep=lambda s: None)
    assert call.calls == 4


def test_give_up_may_keep_the_original_error() -> None:
    with pytest.raises(TypeError, match="operand"):
        retries.call_with_retries(Flaky(TypeError("operand")), describe="x",
                                  policy=retries.RetryPolicy(),
                                  give_up=lambda error, attempts: error)
