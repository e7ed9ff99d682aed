# All set-up on a fresh Debian 12 machine goes through `install` (run as root: it uses apt-get).
VENV    ?= .venv
PY      := $(VENV)/bin/python
ORACLE  := build/estargz-check
STARGZ_GRPC := build/stargz-grpc
TRIXIE  := build/trixie/.fetched

.PHONY: install test lint bench demo clean

install: $(VENV)/.installed $(TRIXIE) $(ORACLE) $(STARGZ_GRPC)

# The demo needs only what ctr-remote itself runs on; the tests need everything.
$(VENV)/.runtime: pyproject.toml script/setup.sh
	script/setup.sh system runtime
	script/setup.sh venv $(VENV)
	touch $@

$(VENV)/.installed: $(VENV)/.runtime
	script/setup.sh system all
	script/setup.sh venv $(VENV) test
	touch $@

$(TRIXIE): script/setup.sh | $(VENV)/.installed
	script/setup.sh trixie build/trixie

# Our oracle's Go source: an edit rebuilds estargz-check, estargz-check-gen and estargz-check-v0.12.
ORACLE_SRC := $(wildcard tests/oracle/*.go tests/oracle/gen/*.go)

$(ORACLE): $(ORACLE_SRC) script/setup.sh $(VENV)/.installed $(TRIXIE)
	script/setup.sh oracle build

$(STARGZ_GRPC): tests/lazypull/stargz-grpc/main.go $(VENV)/.installed $(TRIXIE)
	script/setup.sh stargz-grpc build

test: install
	$(VENV)/bin/ruff check ctr_remote tests bench script
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check ctr_remote tests bench script
	$(VENV)/bin/mypy
	$(VENV)/bin/ruff format --check ctr_remote tests bench

bench: install
	$(PY) -m bench $(BENCH)

demo: $(VENV)/.runtime
	script/demo.sh

clean:
	rm -rf build $(VENV) .pytest_cache
