"""`privkit bench --accounting`: its baselines are today's method, its rows carry the agreed keys.

The benchmark's full run takes minutes (the old paths); here its parts are checked: the old paths
reproduce the recorded values of commit dab6b09 exactly, a row computes its speed-up and the
range of change, and the command prints and writes the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from privkit import bench_accounting, cli

REFERENCE = json.loads((Path(__file__).parent / "data" / "accounting_reference.json").read_text())


def test_old_paths_reproduce_todays_values() -> None:
    rows = [
        r
        for r in REFERENCE["epsilons"]
        if r["accountant"] == "prv" and r["steps"] <= 18 and "epsilon" in r
    ]
    for row in rows[::6]:
        old = bench_accounting._opacus_epsilon(
            row["noise_multiplier"], row["sample_rate"], row["steps"], row["delta"]
        )
        assert old == row["epsilon"]
    row = next(
        r for r in REFERENCE["calibrations"] if r["target_epsilon"] == 1.0 and r["steps"] == 54
    )
    assert (
        bench_accounting._opacus_calibrate(1.0, row["sample_rate"], 54) == row["noise_multiplier"]
    )


def test_a_row_reports_speedup_and_the_range_of_change() -> None:
    row = bench_accounting._row("x", "s", lambda: [1.0, 2.5], lambda: [1.0, 2.0], "epsilon")
    assert row.speedup == pytest.approx(row.old_s / row.new_s) and (
        row.change_min,
        row.change_max,
    ) == (0.0, 0.5)
    row = bench_accounting._row("y", "s", lambda: 1.01, lambda: 1.0, "sigma")
    assert row.change_min == row.change_max == pytest.approx(0.01)
    row = bench_accounting._row("z", "s", lambda: 1.0, None, "sigma")
    assert row.old_s is row.speedup is row.change_min is None
    table = bench_accounting.format_table({"rows": [r.__dict__ for r in [row]]})
    assert table.splitlines()[1].startswith("z") and table.splitlines()[1].rstrip().endswith("-")


def test_bench_accounting_command_prints_and_writes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    calls = []

    def run(**kwargs: object) -> dict:
        calls.append(kwargs)
        row = bench_accounting._row("epsilon", "sigma 1", lambda: 1.0, lambda: 1.0, "epsilon")
        return {"rows": [row.__dict__]}

    monkeypatch.setattr(bench_accounting, "run", run)
    assert (
        cli.main(
            ["bench", "--accounting", "--plan-groups", "2", "--json", str(tmp_path / "a.json")]
        )
        == 0
    )
    assert calls == [{"plan_groups": [2], "all_baselines": False}]
    assert "speedup" in capsys.readouterr().out
    keys = set(json.loads((tmp_path / "a.json").read_text())["rows"][0])
    assert {"name", "new_s", "old_s", "speedup", "change_min", "change_max"} <= keys
