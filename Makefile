# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: run test test-unit lint bench bench-decision smoke-image mutation clean

$(VENV)/.installed: pyproject.toml
	"$$(scripts/find-python)" -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed  ## start the proxy on the shipped pinset (config/pins.yaml)
	$(VENV)/bin/pinproxy run $(ARGS)

# The end-to-end tests mostly wait (on sockets, timeouts, child processes): four workers on two
# cores keep the suite within its time budget. A test file runs in one worker (its module-scoped
# proxies and servers are started once); ARGS='-n 0' runs everything in this process.
test: $(VENV)/.installed  ## run the whole test suite
	$(PYTHON) -m pytest -n 4 --dist loadscope $(ARGS)

test-unit: $(VENV)/.installed  ## the fast inner loop: every test not marked e2e (no proxy process, no TLS servers)
	$(PYTHON) -m pytest -m "not e2e" $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check pinproxy addons tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict bench

bench: $(VENV)/.installed  ## pinproxy vs plain mitmdump on loopback (needs nginx, curl; ~9 min; ARGS=--quick: 30 s)
	$(PYTHON) bench/run.py $(ARGS)

bench-decision: $(VENV)/.installed  ## the pin decision alone (~1 min)
	$(PYTHON) bench/decision.py $(ARGS)

smoke-image:  ## the container image's commands in a fresh venv, no container engine (deploy/smoke-test.sh; ~1-2 min, PyPI)
	deploy/smoke-test.sh $(ARGS)

mutation: $(VENV)/.installed  ## mutation testing of the pure core against its unit tests ([tool.mutmut]; docs/testing.md)
	nice -n 19 $(VENV)/bin/mutmut run $(ARGS)
	$(VENV)/bin/mutmut results

clean:
	rm -rf $(VENV)
