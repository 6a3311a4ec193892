"The quality benchmark's probe rows: kept counts only what the base model had right, accuracy counts every question."
import importlib.util, json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    return module


def _probe(right, base_right, kept_ci=(0.0, 1.0)):
    return {"right": right, "base_right": base_right, "result": {"kept_ci": list(kept_ci)}}


def test_kept_counts_only_the_questions_the_base_model_had_right(quality):
    base = [True] * 6 + [False] * 4
    ours = _probe([True] * 5 + [False] + [True] * 4, base)  # broke one, gained four
    trl = _probe([True] * 3 + [False] * 7, base)  # broke three, gained none
    k = quality.kept_rows(ours, trl)
    assert (k["base_right"], k["ours_kept"], k["trl_kept"]) == (6, 5, 3)
    assert k["diff"] == pytest.approx(2 / 6)
    a = quality.accuracy_rows(ours, trl)
    assert (a["questions"], a["ours_count"], a["trl_count"]) == (10, 9, 3)
    assert a["base_rate"] == pytest.approx(0.6) and a["diff"] == pytest.approx(0.6)


def test_paired_rates_gives_a_verdict_only_when_the_interval_excludes_zero(quality):
    same = quality.paired_rates([True, False] * 50, [True, False] * 50)
    assert same["diff"] == 0 and same["diff_ci"] == [0.0, 0.0] and same["verdict"] == "no clear difference"
    better = quality.paired_rates([True] * 100, [False] * 20 + [True] * 80)
    assert better["verdict"] == "better" and better["diff_ci"][0] > 0
    worse = quality.paired_rates([False] * 20 + [True] * 80, [True] * 100)
    assert worse["verdict"] == "worse" and worse["diff_ci"][1] < 0
    noisy = quality.paired_rates([True, False] * 10, [False, True] * 9 + [True, True])
    assert noisy["verdict"] == "no clear difference" and noisy["diff_ci"][0] < 0 < noisy["diff_ci"][1]


def test_the_table_shows_kept_and_probe_accuracy_rows(quality):
    base = [True] * 6 + [False] * 4
    ours, trl = _probe([True] * 10, base), _probe([False] * 10, base)
    row = {"set": "demo", "train_records": 10, "comparison": {}, "kept": quality.kept_rows(ours, trl),
           "probe_accuracy": quality.accuracy_rows(ours, trl)}
    lines = quality.table([row]).splitlines()
    assert "kept (of 6 probe answers the base had right) | 1.000 (6) | 0.000 (0)" in lines[2]
    assert "probe accuracy (of 10 questions; base model 0.600) | 1.000 | 0.000" in lines[3]
    assert lines[3].endswith("| better |")


def test_a_probe_file_is_reused_unless_the_model_is_new(quality, tmp_path, monkeypatch):
    made = []
    def fake_run(cmd, log):  # stands in for PROBE_SCRIPT: writes the file for the model it is given
        made.append(cmd[3])
        Path(cmd[4]).write_text(json.dumps({"right": [len(made) == 1], "base_right": [True], "result": {}}))
    monkeypatch.setattr(quality, "_run", fake_run)
    out = tmp_path / "probe-ours.json"
    first = quality.probe_rights(tmp_path, tmp_path / "model", out)
    assert quality.probe_rights(tmp_path, tmp_path / "model", out) == first and len(made) == 1  # re-scoring reuses it
    assert quality.probe_rights(tmp_path, tmp_path / "model", out, again=True)["right"] == [False]  # a new model
    out.write_text(json.dumps({"result": {}, "base_right": [True]}))  # an older file without per-question answers
    quality.probe_rights(tmp_path, tmp_path / "model", out)
    assert len(made) == 3


def test_trl_training_seconds_are_read_from_its_own_log(quality, tmp_path):
    # the Trainer's own figure: not the wall time of a process that may have ended long before anyone asked
    (tmp_path / "trl.log").write_text("no run\n")
    assert quality.trl_train_seconds(tmp_path) is None
    (tmp_path / "trl.log").write_text("{'loss': '1.6', 'epoch': '1.1'}\n{'train_runtime': '91.78', 'epoch': '3'}\n"
                                      "{'train_runtime': '12.5', 'epoch': '3'}\n")
    assert quality.trl_train_seconds(tmp_path) == 12.5  # the last run in the log
