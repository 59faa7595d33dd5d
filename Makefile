# helmrec: `make demo` runs the whole path on this machine, `make test` lints (ruff) and runs the suite.
# Both build the virtual environment first (torch's CPU build before anything else,
# so no dependency pulls the multi-GB CUDA build).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HELMREC := $(VENV)/bin/helmrec
WEIGHTS := model_repository/hstu/1/weights.pt
# The router's native data plane (`helmrec route --data-plane native`); needs grpc++
# (Debian: apt-get install libgrpc++-dev pkg-config).
HOP := router/native/helmrec-hop
CXX ?= g++

.PHONY: venv demo test weights clean hop

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps recbole  # only for MovieLens-100K, which it ships
	$(PY) -m pip install -q -e '.[test,loadgen]'
	touch $@

venv: $(VENV)/.installed

$(WEIGHTS): $(VENV)/.installed
	$(HELMREC) train-model --preset ml100k --out $(WEIGHTS)

weights: $(WEIGHTS)

demo: $(VENV)/.installed $(WEIGHTS)
	$(PY) -m helmrec.load.demo --model-repository model_repository

$(HOP): router/native/hop.cc
	$(CXX) -O2 -std=c++17 -Wall -Wextra $< $$(pkg-config --cflags --libs grpc++ protobuf) -o $@

hop: $(HOP)

test: $(VENV)/.installed
	@if pkg-config --exists grpc++ protobuf 2>/dev/null; then $(MAKE) --no-print-directory hop; \
	else echo "make test: no grpc++ here (apt-get install libgrpc++-dev pkg-config): the native hop's tests skip"; fi
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -ra

clean:
	rm -rf $(VENV) $(WEIGHTS) $(HOP)
