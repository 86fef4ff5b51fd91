# The two commands: `make demo` (set up, run the main job) and `make test`
# (set up, build the guest programs, check style with ruff, run the whole suite).
PY := .venv/bin/python

.PHONY: setup guest demo test lint bench clean

setup:
	./scripts/setup.sh

guest: setup
	$(MAKE) -C guest

demo: guest
	./scripts/demo.sh

test: guest lint
	$(PY) -m pytest -q

lint: setup
	.venv/bin/ruff check .

bench: guest
	$(PY) bench/msgplane.py
	$(PY) bench/cpu.py
	$(PY) bench/native.py
	$(PY) bench/io.py
	$(PY) bench/vmm.py

clean:
	$(MAKE) -C guest clean
	rm -rf .venv *.egg-info
