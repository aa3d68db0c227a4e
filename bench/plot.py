"""PNG of a benchmark: the TTFT CDF per configuration; for a request-rate sweep, latency
against achieved throughput (one line per server configuration); for multi-turn workloads,
mean TTFT per turn index."""
from __future__ import annotations

from bench.report import ConfigResult


def _sweep_lines(results: list[ConfigResult]) -> dict[str, list[ConfigResult]]:
    lines: dict[str, list[ConfigResult]] = {}
    for result in results:
        lines.setdefault(result.settings.get("config", result.name), []).append(result)
    return {name: runs for name, runs in lines.items() if len(runs) > 1}


def _draw_cdf(axis, results: list[ConfigResult]) -> None:
    for result in results:
        values = sorted(t * 1e3 for t in result.ttfts_s)
        if values:
            fractions = [(i + 1) / len(values) for i in range(len(values))]
            axis.step(values, fractions, where="post", label=result.name)
    axis.set_xlabel("TTFT (ms)")
    axis.set_ylabel("fraction of requests")
    axis.set_title("TTFT CDF")
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")


def _draw_sweep(axis, lines: dict[str, list[ConfigResult]]) -> None:
    for name, runs in lines.items():
        runs = sorted(runs, key=lambda r: r.metrics["request_throughput_req_s"])
        x = [r.metrics["request_throughput_req_s"] for r in runs]
        color = None
        for stat, style in (("mean", "-o"), ("p99", "--x")):
            y = [(r.metrics["e2e_latency_ms"] or {}).get(stat) for r in runs]
            (line,) = axis.plot(x, y, style, color=color, label=f"{name} e2e {stat}")
            color = line.get_color()   # one color per configuration, the style tells the statistic
    axis.set_xlabel("achieved request throughput (req/s)")
    axis.set_ylabel("end-to-end latency (ms)")
    axis.set_title("latency vs throughput")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")


def _draw_by_turn(axis, results: list[ConfigResult]) -> None:
    for result in results:
        by_turn = result.metrics.get("ttft_ms_by_turn") or {}
        turns = sorted(by_turn, key=int)
        axis.plot([int(t) for t in turns], [by_turn[t]["mean"] if by_turn[t] else None for t in turns],
                  "-o", label=result.name)
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("turn")
    axis.set_ylabel("mean TTFT (ms)")
    axis.set_title("TTFT per turn")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")


def plot(path: str, results: list[ConfigResult], title: str) -> None:
    """Panels: TTFT CDF; latency vs throughput (rate sweeps); mean TTFT per turn (multi-turn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = _sweep_lines(results)
    panels = [lambda axis: _draw_cdf(axis, results)]
    if lines:
        panels.append(lambda axis: _draw_sweep(axis, lines))
    if any(r.metrics.get("ttft_ms_by_turn") for r in results):
        panels.append(lambda axis: _draw_by_turn(axis, results))
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    for draw, axis in zip(panels, axes[0]):
        draw(axis)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
