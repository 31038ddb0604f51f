# Fresh machine: `make demo` installs and runs the demo; `make test` installs and runs the tests.
# The newest of Python 3.13, 3.12, 3.11 on PATH that runs (a pyenv shim of a version not enabled does not).
PYTHON ?= $(firstword $(foreach v,3.13 3.12 3.11,$(shell python$(v) -c "" 2>/dev/null && echo python$(v))))
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml deploy/install.sh
	@test -n "$(PYTHON)" || { echo "make: Python 3.11, 3.12 or 3.13 is needed (python3.1x on PATH, or PYTHON=...)"; exit 2; }
	PYTHON=$(PYTHON) VENV=$(VENV) BUILD_CPU_OPS=0 bash deploy/install.sh
	touch $@

# DeepSpeed's CPU all-reduce op: the tests start learners of two and three ranks; the demo's one rank never loads it.
$(VENV)/.cpu-ops-built: $(VENV)/.installed deploy/build_cpu_ops.sh
	VENV=$(VENV) bash deploy/build_cpu_ops.sh
	touch $@

demo: install
	$(BIN)/dudi tiny-world
	$(BIN)/dudi train configs/demo.yaml

test: install $(VENV)/.cpu-ops-built
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
