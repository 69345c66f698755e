# Everything a person needs, from a fresh Debian 12 machine (as root).
.PHONY: setup test image image-test demo lint format bench clean

VENV := .venv
PY := $(VENV)/bin/python

setup:
	bash scripts/setup.sh

test: setup
	$(VENV)/bin/ruff check rover tests bench
	$(VENV)/bin/ruff format --check rover tests bench
	$(PY) -m mypy
	$(PY) -m pytest -ra -m "not image" $(PYTEST_ARGS)

# The container image (podman; see docs/deploy.md), and its tests: they run the image built
# last, so build it first (CI runs both).
image:
	bash scripts/build-image.sh

image-test: setup
	$(PY) -m pytest -ra -m image $(PYTEST_ARGS)

demo: setup
	bash scripts/demo.sh

lint:
	$(VENV)/bin/ruff check rover tests bench
	$(VENV)/bin/ruff format --check rover tests bench
	$(PY) -m mypy

format:
	$(VENV)/bin/ruff format rover tests bench
	$(VENV)/bin/ruff check --fix rover tests bench

bench: setup
	$(PY) bench/bench_symbols.py
	$(PY) bench/bench_symbol_sources.py
	$(PY) bench/bench_drain.py
	$(PY) bench/bench_unwind.py
	$(PY) bench/bench_agent.py
	$(PY) bench/bench_memory.py
	$(PY) bench/bench_soak.py
	$(PY) bench/bench_continuous.py
	$(PY) bench/bench_convert.py
	$(PY) bench/bench_network.py
	$(PY) bench/bench_http1.py

clean:
	rm -rf build .pytest_cache .mypy_cache tests/artifacts
