"""The benchmark (bench/): a tiny real run end to end, and its judging and reporting parts.

The end-to-end run uses the real nginx, curl, mitmdump and pinproxy on loopback, one round of
a few dozen requests per workload: it checks the benchmark works, not how fast anything is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import load, proxies, results
from bench.pki import make_pki
from tests.proxy import REPO

RUN = [sys.executable, str(REPO / "bench" / "run.py")]
TINY = ["--rounds", "1", "--pinset-sizes", "10", "--requests", "24", "--duration", "20",
        "--parallel", "4"]


def bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RUN, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, check=False)


def ratio_fits(ratio: float, variant: float, plain: float) -> bool:
    """The printed ratio (2 places) agrees with the printed rates (1 place), whose rounding
    alone moves the quotient: at a few transfers per second, by more than 0.005."""
    low = (variant - 0.05) / (plain + 0.05)
    high = (variant + 0.05) / (plain - 0.05)
    return low - 0.005 <= ratio <= high + 0.005


@pytest.mark.e2e
def test_tiny_run_prints_every_table_with_ratios_and_writes_json(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    done = bench(*TINY, "--compare", "plain,bare,pinproxy", "--json", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    # calibration proved one tunnel per new-tunnel transfer, counted by curl and by nginx
    assert "new-tunnel 8 transfers → 8 tunnels (curl), 8 upstream connections" in done.stderr
    for workload in ("new-tunnel", "keep-alive", "h2"):
        assert f"pinset 10 hosts · {workload}:" in done.stdout
    median_rows = [line.split() for line in done.stdout.splitlines()
                   if line.strip().startswith("median")]
    assert len(median_rows) == 3
    for row in median_rows:  # median plain, bare and its ratio, pinproxy and its ratio
        plain, bare, bare_ratio, pinproxy, ratio = (float(cell) for cell in row[1:])
        assert plain > 0 and bare > 0 and pinproxy > 0
        assert ratio_fits(bare_ratio, bare, plain)
        assert ratio_fits(ratio, pinproxy, plain)
    busy_rows = [line.split() for line in done.stdout.splitlines()
                 if line.strip().startswith("machine busy")]
    assert len(busy_rows) == 3
    assert all(0 < int(cell.rstrip("%")) <= 100 for row in busy_rows for cell in row[2:])
    assert "all measurements valid" in done.stdout
    data = json.loads(report.read_text())
    assert {run["variant"] for run in data["runs"]} == {"plain", "bare", "pinproxy"}
    for run in data["runs"]:
        assert run["error"] == "" and run["startup"] > 0 and run["rss_kib"] > 10_000
        for measured in run["loads"]:
            assert measured["problems"] == [] and measured["ok"] == 24
    new_tunnel = next(s for s in data["summary"] if s["workload"] == "new-tunnel")
    assert new_tunnel["median_ratios_to_plain"]["pinproxy"] > 0
    assert all(r["transfers"] == r["tunnels"] for row in new_tunnel["per_round"]
               for r in row.values())


@pytest.mark.e2e
def test_soak_prints_the_rss_series_and_its_growth(tmp_path: Path) -> None:
    report = tmp_path / "soak.json"
    done = bench("--soak", "1", "--soak-interval", "0.5", "--pinset-sizes", "10",
                 "--parallel", "4", "--workloads", "new-tunnel", "--json", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    title, series, growth = done.stdout.splitlines()[:3]
    assert title == "soak pinproxy, RSS (MiB) every 0.5 s:"
    assert series.startswith("  t=    0 s ") and len(series.split()) == 3 + 3  # t=0, 0.5, 1 s
    assert "growth first → last" in growth and "0 problems" in growth
    data = json.loads(report.read_text())["soak"]
    assert [round(t, 1) for t, _ in data["samples"]] == [0.0, 0.5, 1.0]
    assert data["transfers"]["keep-alive"] > 0 and data["transfers"]["new-tunnel"] > 0


@pytest.mark.e2e
def test_reload_prints_the_longest_pause_with_and_without_a_reload(tmp_path: Path) -> None:
    report = tmp_path / "reload.json"
    done = bench("--reload", "1.5", "--pinset-sizes", "10", "--parallel", "4",
                 "--workloads", "keep-alive", "--json", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reload pause (pinproxy, keep-alive, 4 transfers in flight)" in done.stdout
    assert "all transfers answered 200, every reload logged" in done.stdout
    [measured] = json.loads(report.read_text())["reload"]
    assert measured["pinset_size"] == 10 and measured["problems"] == []
    assert 0 < measured["baseline_gap"] < 1.5 and 0 < measured["reload_gap"] < 1.5
    assert measured["reload_rate"] > 0


def test_bad_flags_are_one_line_and_exit_2() -> None:
    for args, message in ((["--compare", "plain,pinproxy-fast"], "unknown proxy variant"),
                          (["--workloads", "h3"], "unknown workload 'h3'"),
                          (["--pinset-sizes", "0"], "--pinset-sizes must be positive")):
        done = bench(*args)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
        assert done.stdout == ""


@pytest.mark.e2e
def test_a_proxy_that_does_not_start_fails_with_its_error_line(tmp_path: Path) -> None:
    setup = proxies.ProxySetup(tmp_path / "confdir", make_pki(tmp_path).ca_file, tmp_path)
    pinset = tmp_path / "pins.yaml"
    pinset.write_text("version: 1\nhosts: []\n")
    with pytest.raises(proxies.ProxyFailed, match=r"pinproxy-w0 \(exit 2\): .*--workers"):
        proxies.start(proxies.variant("pinproxy-w0"), setup, pinset)
    started = proxies.start(proxies.variant("pinproxy"), setup, pinset)  # the twin: it starts
    try:
        assert started.startup > 0 and started.rss_kib() > 10_000
    finally:
        started.stop()
    assert started.process.returncode is not None


NEW_TUNNEL = load.workload("new-tunnel")


def lines(*texts: str) -> list[tuple[float, str]]:
    return [(float(i), text) for i, text in enumerate(texts)]


def test_transfers_all_200_on_new_tunnels_are_valid() -> None:
    result = load.read_transfers(NEW_TUNNEL, lines(*[f"{load.MARK}200 1 1.1"] * 40), 40.0,
                                 False, 40, 4, 0)
    assert result.valid and result.ok == 40 and result.tunnels == 40
    assert result.rate == pytest.approx(1.0)  # 36 transfers between t=3 and t=39


def test_the_longest_gap_is_taken_after_the_first_wave() -> None:
    times = [0.0, 5.0, 5.1, 5.2, 7.2, 7.3]  # the 5 s before the first wave ended do not count
    result = load.read_transfers(NEW_TUNNEL, [(t, f"{load.MARK}200 1 1.1") for t in times],
                                 8.0, False, 6, 2, 0)
    assert result.longest_gap == pytest.approx(2.0)


def test_errors_reused_tunnels_and_missing_transfers_make_a_run_invalid() -> None:
    result = load.read_transfers(NEW_TUNNEL, lines(
        f"{load.MARK}200 1 1.1", f"{load.MARK}502 1 1.1", f"{load.MARK}200 0 1.1",
        f"{load.MARK}000 1 0", "curl: (56) Proxy CONNECT aborted", f"{load.MARK}200 1 2"),
        6.0, False, 10, 2, 56)
    assert not result.valid and result.ok == 2
    assert set(result.problems) == {
        "1x status 502", "1x no response (curl error)", "1x 200 over HTTP/2",
        "1x curl: (56) Proxy CONNECT aborted", "curl exited (56) after 5 of 10 transfers",
        "5 transfers opened 4 tunnels, not one each"}


def measured(rate: float, *problems: str) -> load.LoadResult:
    return load.LoadResult("h2", rate, 100, 100, 1, 1.0, False, problems, proxy_cpu=0.1)


def test_report_marks_invalid_values_and_failed_proxies_and_keeps_them_out_of_medians() -> None:
    runs = [results.ProxyRun(10, 1, "plain", 0.5, 90_000, (measured(100.0),)),
            results.ProxyRun(10, 1, "pinproxy", 0.6, 95_000, (measured(90.0),)),
            results.ProxyRun(10, 2, "plain", 0.5, 90_000, (measured(300.0, "1x status 502"),)),
            results.ProxyRun(10, 2, "pinproxy", 0.6, 95_000, (measured(80.0),)),
            results.ProxyRun(10, 1, "pinproxy-w2", None, None, error="usage: --workers")]
    names = ["plain", "pinproxy", "pinproxy-w2"]
    summaries = results.summarize(runs, [10], 2, names, [load.workload("h2")])
    (summary,) = summaries
    assert summary.medians == {"plain": 100.0, "pinproxy": 85.0, "pinproxy-w2": None}
    assert summary.median_ratios == {"pinproxy": 0.9, "pinproxy-w2": None}  # round 2 has no plain
    assert summary.cpu_ms["pinproxy"] == pytest.approx(1.0)
    text = results.render(summaries, runs, names, [10])
    assert "300.0!" in text and "1x status 502" in text
    assert "pinproxy-w2 failed: pinset 10, round 1: usage: --workers" in text
    assert "all measurements valid" not in text
    valid_text = results.render(results.summarize(runs[:2], [10], 1, names[:2],
                                                  [load.workload("h2")]), runs[:2], names[:2], [10])
    assert "all measurements valid" in valid_text and "!" not in valid_text
