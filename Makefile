# Two entry points: `make demo` runs the main job, `make test` runs the whole check.
# Each builds its own virtual environment (.venv) from the pinned requirements.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export OMP_WAIT_POLICY := PASSIVE

.PHONY: demo test venv bench clean

$(BIN)/.installed: requirements-test.txt requirements-reference.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-test.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -r requirements-reference.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/tensorprograms tour --out figures

test: venv
	$(BIN)/ruff format --check src tests benchmarks examples tools
	$(BIN)/ruff check src tests benchmarks examples tools
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python benchmarks/limit_vs_finite.py
	$(BIN)/python benchmarks/kernels.py
	$(BIN)/python benchmarks/empirical_ntk.py
	$(BIN)/python benchmarks/mup_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info
