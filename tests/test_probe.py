"""The general-knowledge probe: its shipped questions, the lenient match, the kept rate and its interval, the broken
list, loading, and where it shows (report, plot); the comparison and loss plots' layout."""
import fnmatch, json
from pathlib import Path

import matplotlib
import pytest
from matplotlib.colors import to_rgb

from gpt_finetune.compare import VERDICT_COLOURS, plot_comparison, plot_overfitting, write_report
from gpt_finetune.curves import BestWeights, LivePlot, LossHistory, plot_losses
from gpt_finetune.data import DataError
from gpt_finetune.evaluation import references_of
from gpt_finetune.model import tiny_model
from gpt_finetune.probe import (answer_probe, compare_probe, load_probe, probe_markdown, probe_match, probe_path,
                                probe_summary, probe_words, wilson_interval)

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parent.parent
Z2 = 1.959963984540054 ** 2  # the 97.5 % normal quantile, squared


# --- the shipped questions ---

def test_shipped_probe_has_200_distinct_questions_each_with_an_accept_list():
    probe = load_probe("default")
    assert len(probe) >= 200
    assert all(r["accept"] and all(a.strip() for a in r["accept"]) for r in probe)
    questions = [" ".join(probe_words(r["input"])) for r in probe]
    assert len(set(questions)) == len(questions), "a question is asked twice"
    assert {r["topic"] for r in probe} >= {"arithmetic", "units", "science", "geography", "language", "history"}


def test_every_accepted_answer_has_words_and_none_is_in_its_question():
    "An answer that only repeats the question must not score."
    for r in load_probe("default"):
        assert all(probe_words(a) for a in references_of(r)), r["source"]
        assert not probe_match(r["input"], references_of(r)), r["source"]


def test_probe_is_package_data_and_not_the_bundled_training_data():
    path = probe_path()
    assert path.is_file() and path.parent == ROOT / "gpt_finetune" / "assets"
    setup = (ROOT / "setup.py").read_text()
    assert '"assets/*"' in setup and fnmatch.fnmatch(f"assets/{path.name}", "assets/*")  # shipped in the wheel
    bundled = {" ".join(probe_words(r["input"]))
               for r in json.loads((ROOT / "gpt_finetune" / "assets" / "chatterbot_pairs.json").read_text())}
    assert not [r["input"] for r in load_probe() if " ".join(probe_words(r["input"])) in bundled]


# --- the match ---

@pytest.mark.parametrize("answer, accept, right", [
    ("The capital of France is Paris.", ["Paris"], True),
    ("PARIS!", ["paris"], True),
    ("Parisian cafés", ["Paris"], False),  # whole words only
    ("The city is New York City.", ["New York"], True),  # a word sequence
    ("York", ["New York"], False),
    ("New and York", ["New York"], False),  # consecutive
    ("It's Brasília.", ["Brasilia"], True),  # accents folded
    ("Reykjavik", ["Reykjavík"], True),
    ("Water is H₂O.", ["H2O"], True),  # compatibility forms folded
    ("ＰＡＲＩＳ", ["Paris"], True),
    ("The answer is four.", ["4"], True),  # number words become digits
    ("4", ["four"], True),
    ("fifty-six", ["56"], True),
    ("one hundred and twenty", ["120"], True),
    ("It is 1,024.", ["1024"], True),  # thousands separators
    ("About 4.0 degrees", ["4"], True),  # trailing decimal zeros
    ("3.14159", ["3.14"], False),  # a different number
    ("It is 14.", ["4"], False),
    ("The Pacific Ocean", ["Pacific"], True),
    ("Pacific", ["the Pacific"], True),  # articles dropped on both sides
    ("I don't know.", ["Paris", "Lyon"], False),
    ("", ["Paris"], False),
    ("anything at all", ["?!"], False),  # an accepted answer without words matches nothing
])
def test_match(answer, accept, right):
    assert probe_match(answer, accept) is right


def test_words_normalization():
    assert probe_words("The answer is Fifty-six.") == ["answer", "is", "56"]
    assert probe_words("10kg at 100°C") == ["10", "kg", "at", "100", "c"]
    assert probe_words("five six") == ["5", "6"]  # a list of numbers stays a list


# --- the interval, the comparison, the broken list ---

def test_wilson_interval_closed_forms():
    n = 150
    lo, hi = wilson_interval(n, n)
    assert lo == pytest.approx(n / (n + Z2)) and hi == 1.0  # all kept: the interval still admits a loss
    lo, hi = wilson_interval(0, n)
    assert lo == 0.0 and hi == pytest.approx(Z2 / (n + Z2))
    lo, hi = wilson_interval(75, n)
    assert lo + hi == pytest.approx(1.0) and 0.42 < lo < 0.43  # symmetric around one half
    assert wilson_interval(0, 0) is None
    assert all(lo <= k / n <= hi for n in range(1, 60) for k in range(n + 1) for lo, hi in [wilson_interval(k, n)])
    lo, hi = wilson_interval(140, 150, level=0.5)
    w95 = wilson_interval(140, 150)
    assert w95[0] < lo < 140 / 150 < hi < w95[1]  # a lower level gives a narrower interval


def test_compare_probe_counts_kept_broken_and_gained():
    probe = [{"input": f"q{i}", "output": str(i), "accept": [str(i)], "source": f"p.jsonl:{i + 1} record {i}"}
             for i in range(6)]
    answer = lambda texts: [{"text": t, "finish_reason": "stop", "right": probe_match(t, references_of(r))}
                            for t, r in zip(texts, probe)]
    base = answer(["0", "1", "2", "3", "no", "no"])
    tuned = answer(["0", "one", "x", "3", "4", "no"])
    res = compare_probe(probe, base, tuned)
    assert (res["questions"], res["base_right"], res["finetuned_right"], res["kept"], res["gained"]) == (6, 4, 4, 3, 1)
    assert res["kept_rate"] == 0.75 and res["kept_ci"] == wilson_interval(3, 4)
    assert res["interval"] == "Wilson score, 95 %"
    assert [(b["source"], b["input"], b["accept"], b["base"], b["finetuned"]) for b in res["broken"]] == [
        ("p.jsonl:3 record 2", "q2", ["2"], "2", "x")]
    assert res["accuracy"]["base"] == res["accuracy"]["finetuned"] == 4 / 6 and res["accuracy"]["diff"] == 0
    json.dumps(res)  # goes into metrics.json as it is
    assert compare_probe(probe, None, tuned) == {"questions": 6, "finetuned_right": 4, "accuracy": 4 / 6}
    none_right = compare_probe(probe, answer(["x"] * 6), tuned)
    assert none_right["kept_rate"] is None and none_right["kept_ci"] is None
    assert "none of 6" in probe_summary(none_right)


def test_summary_and_markdown():
    probe = [{"input": "What is 2 | 2?", "output": "4", "accept": ["four"]}, {"input": "b", "output": "x"}]
    answer = lambda texts: [{"text": t, "finish_reason": "stop", "right": probe_match(t, references_of(r))}
                            for t, r in zip(texts, probe)]
    res = compare_probe(probe, answer(["It is 4.", "x"]), answer(["five", "x"]))
    assert probe_summary(res).startswith("General-knowledge probe: the fine-tuned model kept 1 of the 2 answers "
                                         "the base model had right (50.0 %; Wilson score, 95 % interval")
    md = probe_markdown(res)
    assert "| What is 2 \\| 2? | 4, four | It is 4. | five |" in md  # the broken question side by side, escaped
    kept_all = compare_probe(probe, answer(["4", "x"]), answer(["4", "x"]))
    assert "No question the base model had right was broken." in probe_markdown(kept_all)


# --- loading ---

def test_load_probe_default_file_and_none(tmp_path):
    assert load_probe(None) is None and load_probe("none") is None and load_probe("NONE") is None
    assert len(load_probe()) == len(load_probe("default")) == len(probe_path().read_text().splitlines())
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text('{"input": "What is 2 + 2?", "output": "4", "accept": ["four"]}\n', encoding="utf-8")
    assert [(r["input"], references_of(r)) for r in load_probe(jsonl)] == [("What is 2 + 2?", ["4", "four"])]
    csv = tmp_path / "mine.csv"
    csv.write_text("input,output\nWho wrote Hamlet?,Shakespeare\n", encoding="utf-8")
    assert [references_of(r) for r in load_probe(str(csv))] == [["Shakespeare"]]


@pytest.mark.parametrize("content, expected", [
    ('{"input": "a", "output": "b", "accept": "c"}\n', '"accept" must be a list of strings'),
    ('{"input": "Say nothing.", "output": "..."}\n', "bad.jsonl:1 record 0: no answer with a word or number"),
    ('{"input": "q", "output": "1"}\n{"input": "Q", "output": "2"}\n', "bad.jsonl:2 record 1: question asked twice"),
    ('{"input": "q"}\n', 'missing field "output"'),
    ("", "the file is empty"),
])
def test_bad_probe_file_is_one_line(tmp_path, content, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as e: load_probe(path)
    assert expected in str(e.value) and "\n" not in str(e.value) and "bad.jsonl" in str(e.value)


def test_missing_probe_file_is_one_line(tmp_path):
    with pytest.raises(DataError) as e: load_probe(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(e.value) and "\n" not in str(e.value)


# --- a real (tiny) model end to end, and where the probe shows ---

def _comparison():
    from gpt_finetune.compare import compare_models
    from gpt_finetune.evaluation import evaluate_model
    model, tok = tiny_model("llama")
    test = [{"input": f"What is {i} plus {i}?", "output": f"It is {2 * i}.", "source": f"t.json:{i + 1} record {i}"}
            for i in range(6)]
    _, answers = evaluate_model(model, tok, test, max_new_tokens=3)
    worse = [{**a, "loss": a["loss"] * 2} for a in answers]  # a "fine-tuned" model with a doubled answer loss
    return compare_models(test, answers, worse, n_resamples=200), model, tok


@pytest.fixture(scope="module")
def tiny_run():
    comparison, model, tok = _comparison()
    probe = load_probe()[:12]
    base = answer_probe(model, tok, probe, max_new_tokens=3)
    tuned = [{**a, "right": i % 3 != 0} for i, a in enumerate(base)]  # a pattern of kept, broken and gained
    return comparison, probe, base, tuned


def test_answer_probe_on_a_tiny_model(tiny_run):
    _, probe, base, _ = tiny_run
    assert len(base) == len(probe) and all(set(a) == {"text", "finish_reason", "right"} for a in base)
    assert all(a["right"] == probe_match(a["text"], references_of(r)) for a, r in zip(base, probe))


def test_report_and_plot_show_the_probe(tiny_run, tmp_path):
    comparison, probe, base, tuned = tiny_run
    base = [{**a, "right": i % 2 == 0} for i, a in enumerate(base)]
    result = compare_probe(probe, base, tuned)
    report = write_report(tmp_path, {"base": {}, "finetuned": {}, "comparison": comparison, "probe": result},
                          sections=[probe_markdown(result)])
    text = report.read_text()
    assert "## General knowledge: what fine-tuning kept" in text and probe_summary(result) in text
    assert f"| {result['broken'][0]['input']} |" in text
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    fig = plot_comparison(comparison, probe=result)
    kept = next(ax for ax in fig.axes if ax.get_title().startswith("General knowledge kept"))
    assert kept.get_ylim() == (0, 1.05) and kept.patches[0].get_height() == pytest.approx(result["kept_rate"])
    scores = next(ax for ax in fig.axes if ax.get_title() == "Scores of both models")
    assert "probe accuracy" in [t.get_text() for t in scores.get_xticklabels()]
    nothing_kept = compare_probe(probe, [{**a, "right": True} for a in base], [{**a, "right": False} for a in base])
    assert nothing_kept["kept_rate"] == 0 and plot_comparison(comparison, probe=nothing_kept)  # an interval at an end
    without = write_report(tmp_path / "none", {"base": {}, "finetuned": {}, "comparison": comparison}).read_text()
    assert "General knowledge" not in without


# --- the plots ---

def test_comparison_plot_puts_losses_apart_and_colours_by_verdict(tiny_run):
    comparison = tiny_run[0]
    assert comparison["eval_loss"]["verdict"] == "worse"  # the doubled loss
    fig = plot_comparison(comparison)
    panels = {ax.get_title(): ax for ax in fig.axes}
    scores = panels["Scores of both models"]
    assert scores.get_ylim() == (0, 1.05)
    assert not {"eval_loss", "perplexity", "mean_answer_tokens"} & {t.get_text() for t in scores.get_xticklabels()}
    loss = next(ax for title, ax in panels.items() if title.startswith("Answer loss"))
    assert loss is not scores and loss.get_ylabel() == "loss per answer token (nats)"
    assert loss.patches[1].get_facecolor()[:3] == pytest.approx(to_rgb(VERDICT_COLOURS["worse"]))
    for ax in fig.axes:  # every axis says what it measures
        assert ax.get_ylabel() or ax.get_xlabel(), ax.get_title()
    assert not any(ax.get_title().startswith("General knowledge") for ax in fig.axes)  # no probe: no kept panel


def test_loss_plots_mark_the_kept_step():
    h = LossHistory()
    h.train, h.valid = [(10, 2.0), (20, 1.2), (30, 0.6), (40, 0.2)], [(10, 2.1), (20, 1.6), (30, 1.7), (40, 1.9)]
    marks = lambda fig: [[l.get_xdata()[0] for l in ax.get_lines() if "kept" in l.get_label()] for ax in fig.axes]
    assert marks(plot_losses(h)) == [[], []]  # unknown: nothing marked
    h.kept_step = 20
    assert marks(plot_losses(h)) == [[20], [20]]
    assert marks(plot_losses(h, kept_step=30)) == [[30], [30]]
    assert marks(plot_overfitting(h)) == [[20]]  # the lowest validation loss, and the weights kept
    assert marks(plot_overfitting(h, kept_step=40)) == [[40]]


def test_liveplot_takes_the_kept_step_from_early_stopping(tmp_path):
    from transformers import TrainerControl, TrainerState
    model, _ = tiny_model("llama")
    best, state, control = BestWeights(patience=0), TrainerState(), TrainerControl()
    live = LivePlot(tmp_path / "loss.png", live=False, best=best)
    for step, loss in [(10, 3.0), (20, 2.5), (30, 2.6)]:
        state.global_step = step
        live.on_log(None, state, control, logs={"eval_loss": loss})
        best.on_evaluate(None, state, control, metrics={"eval_loss": loss}, model=model)
        live.on_evaluate(None, state, control)
    live.on_train_end(None, state, control)
    assert live.kept_step == 20 and live._best is None and (tmp_path / "loss.png").stat().st_size > 10_000
