# The README's two commands are `make demo` and `make test`; everything else is for developers.
SHELL := /bin/bash
PY := $(CURDIR)/.venv/bin/python
export PYTHONPATH := $(CURDIR)/build/collections:$(CURDIR)
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/build/collections
LAB_ARGS ?=

.PHONY: deps demo test units integration sanity bench lab-up lab-down lab-status clean openzfs-image test-openzfs bench-openzfs

deps:
	@tools/bootstrap.sh

demo: deps
	$(PY) -m lab.demo $(LAB_ARGS)

# The OpenZFS tier (tests/openzfs) runs last, on its own: preparing its guests beside the other suites (tried)
# slowed those by 2.5x on two cores and gained nothing.  `prepare.py stop` takes the tier down even when pytest
# was interrupted before its fixture could.
test: deps
	$(PY) -m pytest tests/unit tests/integration tests/sanity tests/openzfs; rc=$$?; \
		$(PY) tests/openzfs/prepare.py stop; exit $$rc

units: deps
	$(PY) -m pytest tests/unit

integration: deps
	$(PY) -m pytest tests/integration

sanity: deps
	$(PY) -m pytest tests/sanity

bench: deps
	$(PY) benchmarks/run_all.py

lab-up: deps
	$(PY) -m lab up $(LAB_ARGS)

lab-down: deps
	$(PY) -m lab down $(LAB_ARGS)

lab-status: deps
	$(PY) -m lab status $(LAB_ARGS)

clean: lab-down
	rm -rf build

# The OpenZFS tier (openzfs/): QEMU guests with the OpenZFS kernel module (part of `make test`, see there).
openzfs-image: deps
	$(PY) -m openzfs image

test-openzfs: deps
	$(PY) -m pytest tests/openzfs

bench-openzfs: deps
	$(PY) benchmarks/bench_openzfs_peers.py
