"""scripts/result_log.py: a resumable experiment runs each named setting once, across reruns."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from result_log import ResultLog  # noqa: E402


def test_each_name_runs_once_and_a_rerun_reads_what_was_written(tmp_path, capsys):
    calls = []

    def setting(value):
        def run():
            calls.append(value)
            return {"recall@1": value, "examples": ["long", "list"]}
        return run

    log = ResultLog(tmp_path / "results.jsonl")
    assert log.record("a", setting(0.5))["recall@1"] == 0.5
    assert log.record("a", setting(0.9))["recall@1"] == 0.5  # already done: not run again
    log.record("b", setting(0.25))
    assert calls == [0.5, 0.25]
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["name"] for p in printed] == ["a", "b"] and all("examples" not in p for p in printed)

    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["name"], r["recall@1"], r["examples"]) for r in rows] == [("a", 0.5, ["long", "list"]),
                                                                       ("b", 0.25, ["long", "list"])]
    again = ResultLog(tmp_path / "results.jsonl")  # a rerun after a kill
    assert again.record("b", setting(1.0))["recall@1"] == 0.25 and calls == [0.5, 0.25]
