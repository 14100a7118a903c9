"""Benchmark results: per-round values, ratios to plain mitmdump, medians; as text and JSON.

Ratios are taken within a round (both proxies measured minutes apart, in alternating order),
then the median of those ratios is reported: it cancels slow drifts of the machine that a ratio
of two medians would keep. Invalid measurements (any error) are shown, marked `!`, and left
out of medians and ratios.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.load import LoadResult, Workload
from bench.proxies import PLAIN

__all__ = ["ProxyRun", "Summary", "columns", "render", "summarize", "to_json"]


@dataclass(frozen=True, slots=True)
class ProxyRun:
    """One proxy process: started, loaded with every workload, measured, stopped."""

    pinset_size: int
    round: int  # 1-based
    variant: str
    startup: float | None  # seconds; None when it did not start
    rss_kib: int | None  # after the load, all processes of the proxy
    loads: tuple[LoadResult, ...] = ()
    error: str = ""

    def load(self, name: str) -> LoadResult | None:
        return next((load for load in self.loads if load.workload == name), None)


@dataclass(frozen=True, slots=True)
class Summary:
    """One table: a workload against one pinset size."""

    pinset_size: int
    workload: str
    unit: str
    rounds: tuple[dict[str, LoadResult | None], ...]  # per round: variant -> result
    ratios: tuple[dict[str, float | None], ...]  # per round: variant -> value / plain
    medians: dict[str, float | None]
    median_ratios: dict[str, float | None]
    cpu_ms: dict[str, float | None]  # median proxy CPU milliseconds per transfer
    machine_busy: dict[str, float | None]  # median share of all cores busy (proxy, curl, nginx)
    cpu_ratios: dict[str, float | None]  # median of the per-round ratios to plain


def summarize(runs: Sequence[ProxyRun], sizes: Sequence[int], rounds: int,
              variants: Sequence[str], workloads: Sequence[Workload]) -> list[Summary]:
    by_key = {(run.pinset_size, run.round, run.variant): run for run in runs}
    out = []
    for size in sizes:
        for load in workloads:
            table: list[dict[str, LoadResult | None]] = []
            for number in range(1, rounds + 1):
                row: dict[str, LoadResult | None] = {}
                for name in variants:
                    run = by_key.get((size, number, name))
                    row[name] = run.load(load.name) if run else None
                table.append(row)
            others = [name for name in variants if name != PLAIN]
            ratios = tuple({name: _ratio(_valid(row[name]), _valid(row.get(PLAIN)))
                            for name in others} for row in table)
            cpu_ratios = [{name: _ratio(_cpu(row[name]), _cpu(row.get(PLAIN))) for name in others}
                          for row in table]
            out.append(Summary(
                size, load.name, load.unit, tuple(table), ratios,
                {name: _median(_valid(row[name]) for row in table) for name in variants},
                {name: _median(r[name] for r in ratios) for name in others},
                {name: _median(_cpu(row[name]) for row in table) for name in variants},
                {name: _median(_busy(row[name]) for row in table) for name in variants},
                {name: _median(r[name] for r in cpu_ratios) for name in others}))
    return out


def render(summaries: Sequence[Summary], runs: Sequence[ProxyRun], variants: Sequence[str],
           sizes: Sequence[int]) -> str:
    """The plain-text report: one table per (pinset size, workload), then start-up and memory,
    then every invalid measurement and failed proxy."""
    lines: list[str] = []
    for summary in summaries:
        lines += _workload_table(summary, variants)
    lines += _resource_table(runs, variants, sizes)
    lines += _problems(runs)
    return "\n".join(lines) + "\n"


def to_json(summaries: Sequence[Summary], runs: Sequence[ProxyRun],
            extra: dict[str, Any]) -> dict[str, Any]:
    return {
        **extra,
        "runs": [asdict(run) for run in runs],
        "summary": [{
            "pinset_size": s.pinset_size, "workload": s.workload, "unit": s.unit,
            "per_round": [{name: (asdict(r) if r else None) for name, r in row.items()}
                          for row in s.rounds],
            "ratios_to_plain": list(s.ratios),
            "medians": s.medians, "median_ratios_to_plain": s.median_ratios,
            "proxy_cpu_ms_per_transfer": s.cpu_ms, "cpu_ratios_to_plain": s.cpu_ratios,
            "machine_busy": s.machine_busy,
        } for s in summaries],
    }


# -- text ------------------------------------------------------------------------------------

def _workload_table(summary: Summary, variants: Sequence[str]) -> list[str]:
    header = ["round"]
    for name in variants:
        header += [name] if name == PLAIN or PLAIN not in variants else [name, "ratio"]
    rows = []
    for number, (row, ratios) in enumerate(zip(summary.rounds, summary.ratios, strict=True), 1):
        cells = [str(number)]
        for name in variants:
            cells.append(_cell(row.get(name)))
            if name != PLAIN and PLAIN in variants:
                cells.append(_number(ratios.get(name), 2))
        rows.append(cells)
    median, cpu, busy = ["median"], ["CPU ms/req"], ["machine busy"]
    for name in variants:
        median.append(_number(summary.medians.get(name), 1))
        cpu.append(_number(summary.cpu_ms.get(name), 2))
        share = summary.machine_busy.get(name)
        busy.append("—" if share is None else f"{share:.0%}")
        if name != PLAIN and PLAIN in variants:
            median.append(_number(summary.median_ratios.get(name), 2))
            cpu.append(_number(summary.cpu_ratios.get(name), 2))
            busy.append("")
    title = (f"pinset {_size(summary.pinset_size)} hosts · {summary.workload}: {summary.unit} "
             "(higher is better), ratio = variant / plain in the same round; "
             "CPU ms/req = the proxy's CPU time per transfer, median (lower is better); "
             "machine busy = all cores, proxy + curl + nginx (100% = no core left)")
    return ["", title, *columns([header, *rows, median, cpu, busy])]


def _resource_table(runs: Sequence[ProxyRun], variants: Sequence[str],
                    sizes: Sequence[int]) -> list[str]:
    rows = [["pinset", "variant", "start-up s", "ratio", "RSS MiB", "ratio"]]
    for size in sizes:
        mine = [run for run in runs if run.pinset_size == size]
        plain = {run.round: run for run in mine if run.variant == PLAIN and not run.error}
        for name in variants:
            good = [run for run in mine if run.variant == name and not run.error]
            if not good:
                rows.append([_size(size), name, "failed", "", "", ""])
                continue
            startup = _median(run.startup for run in good)
            rss = _median(run.rss_kib / 1024 if run.rss_kib else None for run in good)
            startup_ratio = _median(_ratio(run.startup, plain[run.round].startup)
                                    for run in good if run.round in plain)
            rss_ratio = _median(_ratio(run.rss_kib, plain[run.round].rss_kib)
                                for run in good if run.round in plain)
            plain_col = name == PLAIN or not plain
            rows.append([_size(size), name, _number(startup, 2),
                         "" if plain_col else _number(startup_ratio, 2), _number(rss, 1),
                         "" if plain_col else _number(rss_ratio, 2)])
    return ["", "start-up (process start → port accepting; with workers: every worker listening) "
                "and RSS after the load, median of "
                "rounds; ratio = variant / plain", *columns(rows)]


def _problems(runs: Sequence[ProxyRun]) -> list[str]:
    lines = []
    for run in runs:
        if run.error:
            lines.append(f"  {run.variant} failed: pinset {_size(run.pinset_size)}, "
                         f"round {run.round}: {run.error}")
        for load in run.loads:
            if load.problems:
                lines.append(f"  invalid: pinset {_size(run.pinset_size)}, round {run.round}, "
                             f"{run.variant}, {load.workload}: {'; '.join(load.problems)}")
    return ["", "problems (invalid values are marked ! and left out of medians):", *lines] \
        if lines else ["", "all measurements valid: every transfer answered 200"]


def columns(rows: list[list[str]]) -> list[str]:
    """Rows as aligned text: the first column left, the others right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.rjust(width) if i else cell.ljust(width)
                             for i, (cell, width) in enumerate(zip(row, widths, strict=True)))
            .rstrip() for row in rows]


def _cell(result: LoadResult | None) -> str:
    if result is None:
        return "—"
    return f"{result.rate:.1f}" + ("" if result.valid else "!")


def _number(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _size(size: int) -> str:
    return f"{size:,}".replace(",", " ")


# -- arithmetic --------------------------------------------------------------------------------

def _valid(result: LoadResult | None) -> float | None:
    return result.rate if result is not None and result.valid else None


def _cpu(result: LoadResult | None) -> float | None:
    return result.cpu_ms_per_transfer if result is not None and result.valid else None


def _busy(result: LoadResult | None) -> float | None:
    return result.machine_busy if result is not None and result.valid else None


def _ratio(value: float | None, base: float | None) -> float | None:
    return value / base if value is not None and base else None


def _median(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None
