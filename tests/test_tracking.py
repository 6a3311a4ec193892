"""Every run writes `training_log.csv`; `report_to` hands the logs to a tracker (TensorBoard event files appear),
and a tracker that is unknown or not installed stops the run with one line before anything is written."""
import csv, importlib.util

import pytest

from gpt_finetune.data import default_data_path, tokenize_records
from gpt_finetune.formats import load_records
from gpt_finetune.model import tiny_model
from gpt_finetune.options import TrainConfig
from gpt_finetune.curves import TrackerError, tracker
from gpt_finetune.train import finetune


@pytest.fixture(scope="module")
def data():
    model, tok = tiny_model("llama")
    records = load_records(default_data_path()).records
    return tokenize_records(records[:24], tok), tokenize_records(records[24:30], tok)


def _cfg(out, **kw):
    return TrainConfig(output_dir=str(out), epochs=2, batch_size=4, learning_rate=3e-3, eval_every=3, log_every=2,
                       warmup=0, progress=False, precision="fp32", save_every=0, **kw)


def test_training_log_csv_and_tensorboard_events(data, tmp_path):
    model, tok = tiny_model("llama")
    stats = finetune(model, tok, *data, _cfg(tmp_path, report_to="tensorboard", early_stopping=0))
    rows = list(csv.DictReader(open(tmp_path / "training_log.csv")))
    assert list(rows[0]) == ["step", "epoch", "train_loss", "valid_loss", "perplexity", "token_accuracy",
                             "learning_rate"]
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == stats["steps"] == 12  # one row per logged step
    train = {int(r["step"]): float(r["train_loss"]) for r in rows if r["train_loss"]}
    valid = {int(r["step"]): float(r["valid_loss"]) for r in rows if r["valid_loss"]}
    assert sorted(train) == list(range(2, 13, 2)) and sorted(valid) == [3, 6, 9, 12]
    assert train == dict(stats["history"].train) and valid[12] == pytest.approx(stats["trained_eval_loss"])
    assert (all(r["learning_rate"] for r in rows if r["train_loss"])
            and all(r["token_accuracy"] for r in rows if r["valid_loss"]))
    events = list((tmp_path / "runs").rglob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 200  # scalars, not only the file header
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(events[0].parent)); acc.Reload()
    assert {"train/loss", "eval/loss"} <= set(acc.Tags()["scalars"])


@pytest.mark.parametrize("name", ["trackio", "wandb", "mlflow"])
def test_missing_tracker_is_one_line_and_writes_nothing(name, data, tmp_path):
    if importlib.util.find_spec(name): pytest.skip(f"{name} is installed")
    model, tok = tiny_model("llama")
    with pytest.raises(TrackerError, match=f"report_to={name}: the {name} package is not installed") as e:
        finetune(model, tok, *data, _cfg(tmp_path / "out", report_to=name))
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_unknown_tracker_is_one_line():
    with pytest.raises(TrackerError, match="unknown tracker 'comet'"): tracker("comet")


@pytest.mark.skipif(not importlib.util.find_spec("wandb"), reason="wandb is not installed")
def test_wandb_is_offline_unless_configured(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False); monkeypatch.delenv("WANDB_API_KEY", raising=False)
    tracker("wandb")
    import os
    assert os.environ["WANDB_MODE"] == "offline"
