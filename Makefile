# The README's two commands are `make demo` and `make test`; everything else is for developers.
SHELL := /bin/bash
PY := $(CURDIR)/.venv/bin/python
export PYTHONPATH := $(CURDIR)/build/collections:$(CURDIR)
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/build/collections
LAB_ARGS ?=

.PHONY: deps demo test units integration sanity bench lab-up lab-down lab-status clean openzfs-image test-openzfs test-openzfs-smoke bench-openzfs fuzz quorum-soak jepsen

deps:
	@tools/bootstrap.sh

demo: deps
	$(PY) -m lab.demo $(LAB_ARGS)

# Two parts, each on two workers (pytest-xdist).  First the tests that need no node (-m "not lab": the unit tests and
# the collection-level checks, both ansible-test sanity runs side by side; tests/conftest.py), then the tests on real
# nodes (-m lab), a whole test module per worker (--dist loadfile), each worker with a session lab of its own
# (tests/integration/conftest.py).  Not both parts at once: beside ansible-test's CPU load the lab's timing-sensitive
# tests (keep-alives, fencing) would not measure what they mean to; beside each other they do.  Both parts collect
# all of tests/ and the marker is checked (a test on nodes without it, or another test with it, fails in the part
# that selects it), so together they run every test exactly once.  The OpenZFS tier (tests/openzfs) runs where the
# machine has hardware virtualisation.  Under QEMU's software emulation it takes about 45 minutes on two cores, which
# would more than double the run, so there it is skipped and the summary says so in one line; `make test-openzfs`
# runs it anywhere.  There the OpenZFS smoke (tests/openzfs/test_smoke.py) runs instead: two guests booted from the
# cached image, the engine alone in them (no Ansible), one zvol in full, incrementally and from a bookmark, one
# transfer killed and resumed from its token, every step checked by sha256 at the snapshot on both sides.  It adds
# about 4-8 minutes of one worker on two idle cores (340-470 s of emulated CPU; its guests run at nice 10).  It never
# builds the image (about 11 minutes, beyond the budget): without the cached image it is skipped with a one-line
# reason; `make openzfs-image` builds it, `python -m openzfs key` names it for a CI cache.  prepare.py stop takes
# down guests that pytest brought up but could not end (interrupted).
test: deps
	$(PY) -m pytest -n 2 --dist loadgroup -m "not lab" tests && \
		{ $(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder -m lab tests; rc=$$?; \
		  $(PY) tests/openzfs/prepare.py stop; exit $$rc; }

units: deps
	$(PY) -m pytest tests/unit

integration: deps
	$(PY) -m pytest tests/integration

sanity: deps
	$(PY) -m pytest tests/sanity

# Coverage-guided fuzzing of the receiving side (tests/fuzz/fuzz_receiver.py) for FUZZ_SECONDS; `make test` runs it
# for 20 s.  The corpus grows across runs in build/fuzz/corpus; each run's log, defect inputs and summary (executions,
# coverage) are in build/fuzz/run-<time>/.  FUZZ_ARGS passes more options (--strict, --stop-on-defect, -- <libFuzzer flags>).
FUZZ_SECONDS ?= 600
FUZZ_ARGS ?=
fuzz: deps
	$(PY) tests/fuzz/fuzz_receiver.py --seconds $(FUZZ_SECONDS) --corpus build/fuzz/corpus \
		--workdir build/fuzz/run-$$(date +%Y%m%d-%H%M%S) $(FUZZ_ARGS)

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

# The OpenZFS tier (openzfs/): QEMU guests with the OpenZFS kernel module (see the note at `test`).
openzfs-image: deps
	$(PY) -m openzfs image

test-openzfs: deps
	SR_OPENZFS=1 $(PY) -m pytest tests/openzfs; rc=$$?; $(PY) tests/openzfs/prepare.py stop; exit $$rc

# The smoke alone (see the note at `test`), building the image first if it is not cached.
test-openzfs-smoke: deps
	SR_OPENZFS=smoke $(PY) -m pytest tests/openzfs/test_smoke.py; rc=$$?; $(PY) tests/openzfs/prepare.py stop; exit $$rc

bench-openzfs: deps
	$(PY) benchmarks/bench_openzfs_peers.py

# The quorum protocol against a simulated network that drops, delays, duplicates and reorders messages and crashes
# nodes, over QUORUM_SCHEDULES seeded schedules per family (make test runs 1,500 per family; a failure prints its
# seed: QUORUM_SEED=<seed> replays it with its event trace).
QUORUM_SCHEDULES ?= 100000
quorum-soak: deps
	QUORUM_SCHEDULES=$(QUORUM_SCHEDULES) $(PY) -m pytest -n 2 tests/unit/plugins/module_utils/test_quorum.py

# The randomized lab run of tests/integration/test_one_configuration.py for JEPSEN_SECONDS (make test: 60 s); it
# prints its seed, and SR_JEPSEN_SEED=<seed> repeats the same choices.
JEPSEN_SECONDS ?= 600
jepsen: deps
	SR_JEPSEN_SECONDS=$(JEPSEN_SECONDS) $(PY) -m pytest -s tests/integration/test_one_configuration.py -k randomized
