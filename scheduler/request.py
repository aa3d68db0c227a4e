"""One request's state as the scheduler sees it (token ids, blocks, progress, limits)."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from protos.v1 import common_pb2


class RequestStatus(enum.Enum):
    WAITING = "waiting"        # not holding blocks (new, or preempted)
    LOADING = "loading"        # holds blocks whose pages are being copied in from the kvstore
    RUNNING = "running"        # holds blocks; scheduled whenever the budget allows
    FINISHED = "finished"      # stopped, length, or aborted; holds nothing


class FinishReason(enum.Enum):
    LENGTH = "length"
    STOP = "stop"
    ABORT = "abort"


@dataclass(slots=True)
class StopCriteria:
    max_tokens: int
    min_tokens: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: frozenset[int] = frozenset()
    is_eos_ignored: bool = False


@dataclass(slots=True)
class RequestTimes:
    """time.monotonic() of a request's milestones, for the latency histograms (metrics.py)."""
    arrival: float = field(default_factory=time.monotonic)
    first_scheduled: float | None = None
    first_token: float | None = None
    last_token: float = 0.0


@dataclass(slots=True)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    sampling: common_pb2.SamplingParams
    stopping: StopCriteria
    namespace: bytes            # block key namespace (model, KV layout, cache_salt)
    arrival_index: int          # FCFS tie-break among equal priorities
    priority: int = 0
    output_token_ids: list[int] = field(default_factory=list)
    # Prompt tokens + output tokens; the executor's view of the request.
    token_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    block_ids: list[int] = field(default_factory=list)
    # Keys of the leading full blocks of token_ids (computed lazily, kept across preemption).
    block_keys: list[bytes] = field(default_factory=list)
    num_cached_blocks: int = 0        # leading blocks already published in the prefix index
    num_computed_tokens: int = 0
    num_cached_tokens: int | None = None   # prefix hit at first admission
    is_known_to_executor: bool = False
    num_blocks_sent: int = 0          # block_ids[:num_blocks_sent] are in the executor's table
    num_preemptions: int = 0
    num_failed_steps: int = 0         # executor steps that failed (not rejected) while it ran
    is_prefetched: bool = False       # its kvstore pages were asked into RAM while it waited
    times: RequestTimes = field(default_factory=RequestTimes)

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    def sort_key(self) -> tuple[int, int]:
        """Scheduling order: higher priority first, then first come first served."""
        return (-self.priority, self.arrival_index)
