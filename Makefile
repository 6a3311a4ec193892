# Two entry points: `make run` (the main job on the defaults) and `make test` (every test).
# Both create .venv on first use. torch is pinned on the install line: left to choose, pip pulls a
# multi-GB CUDA build; Colab and GPU machines bring their own torch and use settings.ini's range.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
PIP    := $(BIN)/python -m pip install -q --disable-pip-version-check

.PHONY: run test test-nbs test-py notebooks export clean-nbs readme bench distclean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-installed: setup.py settings.ini | $(BIN)/python
	$(PIP) "$(TORCH)" -e .
	touch $@

$(VENV)/.dev-installed: setup.py settings.ini | $(BIN)/python
	$(PIP) "$(TORCH)" -e ".[dev]"
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(BIN)/gpt-finetune run $(ARGS)

test: test-nbs test-py

test-nbs: $(VENV)/.dev-installed
	$(BIN)/nbdev_test --n_workers 2 --do_print

test-py: $(VENV)/.dev-installed
	$(BIN)/python -m pytest tests -q

# Execute the notebooks (slow real-model cells included, GPU-only cells kept as they are) and save their outputs,
# so readers see real results; then README.md follows index.ipynb. One notebook: make notebooks NB="nbs/00_data.ipynb"
notebooks: $(VENV)/.dev-installed
	$(BIN)/python tools/run_notebooks.py $(NB)
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
