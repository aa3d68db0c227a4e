"""Side-by-side table, ratios, JSON document and plots of a benchmark invocation."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

RATIO_METRICS = {  # name in `ratios` -> (metric, statistic or None)
    "output_throughput": ("output_throughput_tok_s", None),
    "total_throughput": ("total_throughput_tok_s", None),
    "request_throughput": ("request_throughput_req_s", None),
    "ttft_mean": ("ttft_ms", "mean"),
    "ttft_p50": ("ttft_ms", "p50"),
    "tpot_mean": ("tpot_ms", "mean"),
    "e2e_latency_mean": ("e2e_latency_ms", "mean"),
    "later_turns_wall": ("later_turns_wall_s", None),
}
RATIO_ROWS = (("output tok/s", "output_throughput"), ("turns 2..T wall", "later_turns_wall"))
TABLE_ROWS = [
    ("completed / failed", lambda m: f"{m['num_completed']} / {m['num_failed']}"),
    ("duration (s)", lambda m: _number(m["duration_s"])),
    ("request throughput (req/s)", lambda m: _number(m["request_throughput_req_s"])),
    ("input throughput (tok/s)", lambda m: _number(m["input_throughput_tok_s"])),
    ("output throughput (tok/s)", lambda m: _number(m["output_throughput_tok_s"])),
    ("total throughput (tok/s)", lambda m: _number(m["total_throughput_tok_s"])),
    *[(f"{label} {stat} (ms)", (lambda key, stat: lambda m: _stat(m, key, stat))(key, stat))
      for label, key in (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E", "e2e_latency_ms"))
      for stat in ("mean", "p50", "p90", "p99")],
    ("goodput (req/s)", lambda m: _number(m.get("goodput_req_s"))),
    ("cached token fraction", lambda m: _number(m.get("cached_token_fraction"))),
    ("prefix-cache hit rate (stats)", lambda m: _number(m.get("prefix_cache_hit_rate"))),
    ("preemptions", lambda m: _number(m.get("num_preemptions"))),
    *[(f"{tier} tier hit rate (pages)", (lambda tier: lambda m: _number(_tier(m, tier, "hit_rate")))(tier))
      for tier in ("ram", "disk", "remote")],
    ("kvstore MiB loaded / stored", lambda m: _mib_moved(m)),
    ("wall time per turn (s)", lambda m: " ".join(f"{w:.2f}" for w in m.get("turn_wall_s") or []) or "-"),
    ("turns 2..T wall (s)", lambda m: _number(m.get("later_turns_wall_s"))),
]


def _tier(metrics: dict, tier: str, key: str):
    entry = next((t for t in metrics.get("tiers") or [] if t["tier"] == tier), None)
    return None if entry is None else entry.get(key)


def _mib_moved(metrics: dict) -> str:
    tiers = metrics.get("tiers") or []
    if not tiers:
        return "-"
    loaded = sum(t["bytes_loaded"] for t in tiers) / (1 << 20)
    stored = sum(t["bytes_stored"] for t in tiers) / (1 << 20)
    return f"{loaded:.1f} / {stored:.1f}"


@dataclass(slots=True)
class ConfigResult:
    """One configuration's run: its name, how it was run, its metrics and raw TTFTs (s)."""
    name: str
    metrics: dict
    settings: dict = field(default_factory=dict)
    ttfts_s: list[float] = field(default_factory=list)


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def _stat(metrics: dict, key: str, stat: str) -> str:
    summary = metrics.get(key)
    return "-" if summary is None else _number(summary[stat])


def _value(metrics: dict, metric: str, stat: str | None) -> float | None:
    value = metrics.get(metric)
    if stat is not None:
        value = None if value is None else value.get(stat)
    return value


def ratios(metrics: dict, reference: dict) -> dict[str, float | None]:
    """this / reference for each ratio metric: > 1 is better for throughputs, < 1 for latencies
    and wall times; None where either side lacks the number (e.g. latency vs a baseline)."""
    result = {}
    for name, (metric, stat) in RATIO_METRICS.items():
        mine, theirs = _value(metrics, metric, stat), _value(reference, metric, stat)
        result[name] = mine / theirs if mine is not None and theirs else None
    return result


def attach_ratios(results: list[ConfigResult], baselines: list[ConfigResult]) -> None:
    """Adds `ratios` to every result and baseline: vs the first configuration, then vs each
    baseline in order."""
    if not results:
        return
    for result in results + baselines:
        result.metrics["ratios"] = {f"vs_{reference.name}": ratios(result.metrics, reference.metrics)
                                    for reference in [results[0], *baselines]}


def _ratio_rows(results: list[ConfigResult]) -> list[list[str]]:
    """One row per reference and ratio shown (output tok/s; turns 2..T wall where measured)."""
    rows = []
    for key in dict.fromkeys(key for r in results for key in r.metrics.get("ratios", {})):
        for label, ratio in RATIO_ROWS:
            values = [(r.metrics.get("ratios", {}).get(key) or {}).get(ratio) for r in results]
            if any(value is not None for value in values):
                rows.append([f"{label} {key.replace('_', ' ')}"] + [_number(value) for value in values])
    return rows


def format_table(results: list[ConfigResult]) -> str:
    names = [r.name for r in results]
    rows = [[label] + [render(r.metrics) for r in results] for label, render in TABLE_ROWS]
    rows += _ratio_rows(results)
    widths = [max(len(row[i]) for row in rows + [["metric"] + names]) for i in range(len(names) + 1)]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in [["metric"] + names] + rows]
    return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def document(results: list[ConfigResult], baselines: list[ConfigResult], header: dict) -> dict:
    """The --json document: header (command, workload, versions, machine, threads) plus
    `configurations` and `baselines`, each {name: settings + metrics}."""
    return _jsonable({**header, "configurations": {r.name: {**r.settings, **r.metrics} for r in results},
                      "baselines": {b.name: {**b.settings, **b.metrics} for b in baselines}})


def write_json(path: str, content: dict) -> None:
    with open(path, "w") as out:
        json.dump(content, out, indent=2, sort_keys=False)
        out.write("\n")
