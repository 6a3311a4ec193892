"""The bundled default data is exactly what 00_data derives from chatterbot-corpus, with its notice beside it."""
import json
from pathlib import Path

import chatterbot_corpus

from gpt_finetune.data import default_data_path, sample_chatterbot, load_pairs, clean_records


def test_bundled_sample_is_derived_from_the_corpus():
    english = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    assert json.loads(default_data_path().read_text(encoding="utf-8")) == sample_chatterbot(english)


def test_bundled_sample_is_clean_and_licensed():
    records = load_pairs(default_data_path())
    kept, dropped = clean_records(records)
    assert len(records) == 600 and dropped == []
    notice = (default_data_path().parent / "LICENSE-chatterbot-corpus.txt").read_text()
    assert "BSD 3-Clause" in notice and "Gunther Cox" in notice
