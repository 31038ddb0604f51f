# Fresh machine: `make demo` installs and runs the demo; `make test` installs and runs the tests.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml deploy/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash deploy/install.sh
	touch $@

demo: install
	$(BIN)/dudi tiny-world
	$(BIN)/dudi train configs/demo.yaml

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
