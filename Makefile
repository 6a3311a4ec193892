# Entry points: `make run` (the main job on the defaults; what `gpt-finetune serve` needs comes with it),
# `make test` (every test) and `make lab` (the lessons in Jupyter Lab).
# Each creates .venv on first use. torch is pinned on the install line: left to choose, pip pulls a
# multi-GB CUDA build; Colab and GPU machines bring their own torch and use settings.ini's range.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
PIP    := $(BIN)/python -m pip install -q --disable-pip-version-check

.PHONY: run lab test test-nbs test-py notebooks export clean-nbs readme bench distclean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The README's quick start goes on to `chat`, `generate` and `serve`: the serve extra is part of the run install.
$(VENV)/.run-installed: setup.py settings.ini | $(BIN)/python
	$(PIP) "$(TORCH)" -e ".[serve]"
	touch $@

$(VENV)/.dev-installed: setup.py settings.ini | $(BIN)/python
	$(PIP) "$(TORCH)" -e ".[dev,serve]"
	touch $@ $(VENV)/.run-installed

$(VENV)/.lab-installed: setup.py settings.ini | $(BIN)/python
	$(PIP) "$(TORCH)" -e ".[notebooks,serve]"
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(BIN)/gpt-finetune run $(ARGS)

# The lessons in Jupyter Lab, opened at the first one to read: the tutorial.
lab: $(VENV)/.lab-installed
	$(BIN)/jupyter lab nbs/tutorials/01_finetune_your_questions.ipynb

test: test-nbs test-py

# `make test` three times in a row, stopping at the first failure: a flaky test fails here rather than in CI.
.PHONY: test-repeat
test-repeat:
	for i in 1 2 3; do echo "== make test, run $$i of 3"; $(MAKE) test || exit 1; done

test-nbs: $(VENV)/.dev-installed
	$(BIN)/nbdev_test --n_workers 2 --do_print

test-py: $(VENV)/.dev-installed
	$(BIN)/python -m pytest tests -q

# Execute the notebooks (slow real-model cells included, GPU-only cells kept as they are) and save their outputs,
# so readers see real results; then README.md follows index.ipynb. One notebook: make notebooks NB="nbs/00_data.ipynb"
notebooks: $(VENV)/.dev-installed
	$(BIN)/python tools/run_notebooks.py --timeout 3600 $(NB)
	$(BIN)/python tools/readme.py

# After editing notebooks: strip notebook noise (and fix cell ids), then regenerate the package and README.
export: $(VENV)/.dev-installed
	$(BIN)/nbdev_clean
	$(BIN)/nbdev_export
	$(BIN)/python tools/readme.py

readme: $(VENV)/.dev-installed
	$(BIN)/python tools/readme.py

# Training speed: the seed recipe vs TRL vs gpt_finetune (several minutes); TRL is a benchmark-only dependency.
bench: $(VENV)/.dev-installed
	$(PIP) "$(TORCH)" -r benchmarks/requirements.txt
	$(BIN)/python benchmarks/train_speed.py

distclean:
	rm -rf $(VENV) outputs
