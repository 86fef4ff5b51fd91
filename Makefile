# The two commands: `make demo` (set up, run the main job) and `make test`
# (set up, build the guest programs, run the whole suite).
PY := .venv/bin/python

.PHONY: setup guest demo test bench clean

setup:
	./scripts/setup.sh

guest: setup
	$(MAKE) -C guest

demo: guest
	./scripts/demo.sh

test: guest
	$(PY) -m pytest -q

bench: guest
	$(PY) bench/msgplane.py
	$(PY) bench/cpu.py
	$(PY) bench/native.py
	$(PY) bench/io.py
	$(PY) bench/vmm.py

clean:
	$(MAKE) -C guest clean
	rm -rf .venv *.egg-info
