"""gRPC statuses and validation failures -> OpenAI's error shape, exact values."""
import grpc
import pytest

from gateway_fakes import rpc_error
from strata.gateway.errors import aborted, from_rpc_error, from_validation_errors


@pytest.mark.parametrize("code, status, error_type", [
    (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"),
    (grpc.StatusCode.UNAUTHENTICATED, 401, "authentication_error"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
    (grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable"),
    (grpc.StatusCode.INTERNAL, 500, "server_error"),
])
def test_a_grpc_status_maps_to_its_http_status_and_type(code, status, error_type):
    error = from_rpc_error(rpc_error(code, "why"))
    assert error.status == status
    assert error.body() == {"error": {"message": "why", "type": error_type, "param": None,
                                      "code": code.name.lower()}}


def test_the_schedulers_field_name_becomes_the_param():
    error = from_rpc_error(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "sampling.top_p = 2.0: must be in (0, 1]"))
    assert (error.status, error.param) == (400, "top_p")
    error = from_rpc_error(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "stopping.stop contains an empty string"))
    assert error.param == "stop"


def test_an_abort_is_a_500_error_not_a_finish():
    assert aborted().status == 500
    assert aborted().body()["error"]["code"] == "aborted"


def test_validation_errors_are_one_400_naming_the_first_field():
    error = from_validation_errors([{"loc": ("body", "temperature"), "msg": "Input should be >= 0",
                                     "type": "greater_than_equal"}])
    assert error.body() == {"error": {"message": "temperature: Input should be >= 0",
                                      "type": "invalid_request_error", "param": "temperature", "code": None}}
    extra = from_validation_errors([{"loc": ("body", "tools"), "msg": "Extra inputs", "type": "extra_forbidden"}])
    assert (extra.param, extra.message) == ("tools", "tools: this field is not supported by this server")
    broken = from_validation_errors([{"loc": ("body", 0), "msg": "JSON decode error", "type": "json_invalid",
                                      "ctx": {"error": "Expecting value"}}])
    assert (broken.param, broken.message) == (None, "the body is not valid JSON: Expecting value")
