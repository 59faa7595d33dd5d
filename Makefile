# helmrec: `make demo` runs the whole path on this machine, `make test` lints (ruff) and runs the suite.
# Both build the virtual environment first (torch's CPU build before anything else,
# so no dependency pulls the multi-GB CUDA build).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HELMREC := $(VENV)/bin/helmrec
WEIGHTS := model_repository/hstu/1/weights.pt

.PHONY: venv demo test weights clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps recbole  # only for MovieLens-100K, which it ships
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

$(WEIGHTS): $(VENV)/.installed
	$(HELMREC) train-model --preset ml100k --out $(WEIGHTS)

weights: $(WEIGHTS)

demo: $(VENV)/.installed $(WEIGHTS)
	$(PY) -m helmrec.load.demo --model-repository model_repository

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -ra

clean:
	rm -rf $(VENV) $(WEIGHTS)
