"""Errors the executor raises; the runtime's interceptor maps the StatusError ones to their status."""
import grpc

from runtime.errors import StatusError


class PlanError(StatusError, ValueError):
    """A StepPlan the executor cannot apply (-> INVALID_ARGUMENT). No state was changed."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class CheckpointError(ValueError):
    """A model directory the executor cannot load: the message says what is wrong and what to change."""


class ArenaError(StatusError, OSError):
    """A kvstore arena the executor cannot map (-> FAILED_PRECONDITION)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
