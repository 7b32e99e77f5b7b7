"""The one error mapper: statuses, OpenAI's error shape, nothing leaked."""

from __future__ import annotations

import grpc
import pytest
from pydantic import ValidationError

from gateway.errors import (
    AuthenticationFailed,
    BodyTooLarge,
    ModelNotFound,
    UnsupportedEncoding,
    map_exception,
)
from gateway.protocol.chat_completions import ChatCompletionRequest
from services.common.errors import InvalidInput, NotReady, Overloaded, TooLarge

Code = grpc.StatusCode


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (rpc_error(Code.INVALID_ARGUMENT, "prompt too long"), 400, "invalid_request_error"),
        (rpc_error(Code.OUT_OF_RANGE, "prompt too long"), 400, "invalid_request_error"),
        (rpc_error(Code.RESOURCE_EXHAUSTED, "busy"), 429, "rate_limit_error"),
        (rpc_error(Code.UNAVAILABLE, "ipv4:10.0.0.1:50051"), 503, "service_unavailable_error"),
        (rpc_error(Code.DEADLINE_EXCEEDED, "deadline"), 504, "timeout_error"),
        (rpc_error(Code.INTERNAL, "/srv/model.py line 3"), 500, "server_error"),
        (InvalidInput("bad image"), 400, "invalid_request_error"),
        (TooLarge("too many images"), 400, "invalid_request_error"),
        (Overloaded("full"), 429, "rate_limit_error"),
        (NotReady("loading"), 503, "service_unavailable_error"),
        (AuthenticationFailed("no"), 401, "authentication_error"),
        (ModelNotFound("no such model", param="model"), 404, "invalid_request_error"),
        (BodyTooLarge("big"), 413, "invalid_request_error"),
        (UnsupportedEncoding("gzip"), 415, "invalid_request_error"),
        (TimeoutError(), 504, "timeout_error"),
    ],
)  # fmt: skip
def test_status_and_type(exc: Exception, status: int, kind: str) -> None:
    mapped = map_exception(exc)
    assert (mapped.status, mapped.body.error.type) == (status, kind)
    assert ("Retry-After" in mapped.headers) == (status in (429, 503))


def test_unexpected_errors_never_echo_their_text(caplog: pytest.LogCaptureFixture) -> None:
    """A fixed message per kind for the client; the details in the log, under the request id."""
    secret = "object at 0x7f3a /home/user/.venv/lib/site.py"
    unexpected = (
        RuntimeError(secret), rpc_error(Code.UNKNOWN, secret), rpc_error(Code.INTERNAL, secret),
        rpc_error(Code.PERMISSION_DENIED, secret), rpc_error(Code.DATA_LOSS, secret),
    )  # fmt: skip
    for exc in unexpected:
        caplog.clear()
        mapped = map_exception(exc, request_id="req-42")
        assert mapped.status == 500 and mapped.body.error.message == "internal error"
        assert secret not in mapped.body.model_dump_json()
        assert "req-42" in caplog.text and (secret in caplog.text or "RuntimeError" in caplog.text)
    unavailable = map_exception(rpc_error(Code.UNAVAILABLE, "ipv4:10.0.0.1:50051"))
    assert "10.0.0.1" not in unavailable.body.error.message


def test_validation_errors_are_400_and_name_the_parameter() -> None:
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 99}
        )
    mapped = map_exception(caught.value)
    assert mapped.status == 400 and mapped.body.error.param == "n"
    assert mapped.body.error.message.startswith("n: ")


def test_a_task_groups_error_maps_as_its_first_failure() -> None:
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [InvalidInput("bad clip")])])
    mapped = map_exception(nested)
    assert (mapped.status, mapped.body.error.message) == (400, "bad clip")


@pytest.mark.parametrize(
    "details",
    ["Received message larger than max (9437184 vs. 4194304)",
     "Sent message larger than max (9437184 vs. 4194304)"],
    ids=["received", "sent"],
)  # fmt: skip
def test_grpcs_own_size_limit_is_413_with_a_fixed_message_not_a_retryable_429(
    details: str,
) -> None:
    mapped = map_exception(rpc_error(Code.RESOURCE_EXHAUSTED, details))
    assert (mapped.status, mapped.body.error.code) == (413, "request_too_large")
    assert "Retry-After" not in mapped.headers and "4194304" not in mapped.body.error.message


def test_cancelled_by_a_service_that_shuts_down_is_503_with_retry_after() -> None:
    mapped = map_exception(rpc_error(Code.CANCELLED, "Cancelled on the server side"))
    assert (mapped.status, mapped.body.error.type) == (503, "service_unavailable_error")
    assert mapped.headers["Retry-After"] and "server side" not in mapped.body.error.message
