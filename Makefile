# Two entry points: `make demo` and `make test` (see README.md).
# TORCH_SPEC pins the CPU build that lies on these machines' disk; override it for a CUDA build,
# e.g. `make test TORCH_SPEC=torch`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# GUI tests run under xvfb-run, installed first where it can be (root with apt: tools/install_xvfb.sh);
# elsewhere without a display tests/conftest.py skips them with one line saying how to get it
XVFB := xvfb-run -a -s '-screen 0 1600x1200x24'

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[testing,bench]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/ntk-denoise demo -o demo_output

test: install
	@bash tools/install_xvfb.sh
	$(PY) -m ruff check .
	@if command -v xvfb-run >/dev/null 2>&1; then set -x; $(XVFB) $(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS); \
	else set -x; $(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS); fi

bench: install
	$(PY) benchmarks/bench_ntk.py

clean:
	rm -rf $(VENV) demo_output build dist src/*.egg-info
