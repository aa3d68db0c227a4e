"""SamplingParams from the wire -> a plain validated record with every default filled in."""
from __future__ import annotations

from dataclasses import dataclass

from executor.errors import PlanError

MAX_LOGPROBS = 20


@dataclass(slots=True, frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    num_logprobs: int | None = None  # None: no logprobs; 0: the sampled token's only

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)

    @property
    def has_truncation(self) -> bool:
        return self.top_k > 0 or self.top_p < 1.0 or self.min_p > 0.0


def sampling_from_proto(params, request_id: str) -> Sampling:
    """Validate and convert a strata.v1.SamplingParams; PlanError names the bad field."""
    sampling = Sampling(
        temperature=params.temperature if params.HasField("temperature") else 1.0,
        top_p=params.top_p if params.HasField("top_p") else 1.0,
        top_k=params.top_k, min_p=params.min_p,
        seed=params.seed if params.HasField("seed") else None,
        repetition_penalty=params.repetition_penalty if params.HasField("repetition_penalty") else 1.0,
        presence_penalty=params.presence_penalty, frequency_penalty=params.frequency_penalty,
        num_logprobs=params.logprobs if params.HasField("logprobs") else None)
    problem = _problem(sampling)
    if problem:
        raise PlanError(f"request {request_id!r}: {problem}")
    return sampling


def _problem(s: Sampling) -> str | None:
    if not s.temperature >= 0.0:
        return f"temperature must be >= 0, got {s.temperature}"
    if not 0.0 < s.top_p <= 1.0:
        return f"top_p must be in (0, 1], got {s.top_p}"
    if s.top_k < 0:
        return f"top_k must be >= 0 (0 = off), got {s.top_k}"
    if not 0.0 <= s.min_p <= 1.0:
        return f"min_p must be in [0, 1], got {s.min_p}"
    if not s.repetition_penalty > 0.0:
        return f"repetition_penalty must be > 0, got {s.repetition_penalty}"
    if s.num_logprobs is not None and s.num_logprobs > MAX_LOGPROBS:
        return f"logprobs must be at most {MAX_LOGPROBS}, got {s.num_logprobs}"
    return None
