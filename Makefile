# The two commands of the README: `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint typecheck

$(VENV)/.edgedfl-setup: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

setup: $(VENV)/.edgedfl-setup

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/edgedfl demo   # = edgedfl emulate --model smollm2 --devices 4 --tasks topic,yesno --rounds 3

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check edgedfl tests

typecheck: setup
	$(VENV)/bin/mypy edgedfl
