"""The bundled default data is exactly what 00_data derives from chatterbot-corpus, with its notice beside it, and
it reads through the one loader and cleaner without a problem."""
import json
from pathlib import Path

import chatterbot_corpus

from gpt_finetune.clean import clean_dataset
from gpt_finetune.data import default_data_path, sample_chatterbot
from gpt_finetune.formats import load_records


def test_bundled_sample_is_derived_from_the_corpus():
    english = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    assert json.loads(default_data_path().read_text(encoding="utf-8")) == sample_chatterbot(english)


def test_bundled_sample_is_valid_and_licensed():
    loaded = load_records(default_data_path())
    assert (len(loaded.records), loaded.n_problems, loaded.format) == (600, 0, "pairs")
    kept, rows = clean_dataset(loaded.records)
    dropped = [(r["reason"], r["source"]) for r in rows if r["action"] == "dropped"]
    assert dropped == [("normalized_duplicate", "chatterbot_pairs.json:230 record 57"),
                       ("near_duplicate", "chatterbot_pairs.json:1250 record 312")]  # what 00c_clean shows
    assert len(kept) == 598
    notice = (default_data_path().parent / "LICENSE-chatterbot-corpus.txt").read_text()
    assert "BSD 3-Clause" in notice and "Gunther Cox" in notice
