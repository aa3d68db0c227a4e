"""Errors the executor maps to gRPC statuses (one decorator in daemon.py does the mapping)."""


class PlanError(ValueError):
    """A StepPlan the executor cannot apply (-> INVALID_ARGUMENT). No state was changed."""


class CheckpointError(ValueError):
    """A model directory the executor cannot load: the message says what is wrong and what to change."""


class ArenaError(OSError):
    """A kvstore arena the executor cannot map (-> FAILED_PRECONDITION)."""
