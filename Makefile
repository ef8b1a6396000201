# The two commands (and a benchmark). Each builds what it needs first; the Rust toolchain
# (cargo) is the only prerequisite.

CARGO ?= cargo
SHELL := /bin/bash

.PHONY: demo test bench check-toolchain

check-toolchain:
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "cargo is missing: install Rust from https://rustup.rs, then run make again" >&2; exit 1; }

## The ledger with a demo workload: shoppers binding, paying, unbinding, failing; attackers.
demo: check-toolchain
	$(CARGO) run --release --locked -- demo

## Every test: unit tests, and the integration tests against real sled files, the real HTTP
## server and the real binary killed with SIGKILL.
test: check-toolchain
	@mkdir -p target
	@set -o pipefail; $(CARGO) test --workspace --locked 2>&1 | tee target/test-output.log; status=$$?; \
	  awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($$(i+1) ~ /^passed/) p += $$i; if ($$(i+1) ~ /^failed/) f += $$i } } \
	       END { printf "\n%d passed, %d failed\n", p, f }' target/test-output.log; exit $$status

## Raw sled baseline, library path and HTTP end to end, in one run.
bench: check-toolchain
	$(CARGO) run --release --locked -- bench
