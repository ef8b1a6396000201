# The two commands (and a benchmark). Each installs what it needs first: the Rust toolchain
# (cargo) is the only prerequisite; the development Kafka broker, tansu, is installed from
# crates.io on first use (about 7 minutes, once; then it is in ~/.cargo/bin).

CARGO ?= cargo
SHELL := /bin/bash
TANSU_VERSION := 0.6.0
TANSU ?= $(or $(shell command -v tansu 2>/dev/null),$(HOME)/.cargo/bin/tansu)
# The demo's broker listens here (in memory: a fresh topic each run).
DEMO_KAFKA_PORT ?= 19092

# `make simulate`: the seeds to run (SEED alone replays that one seed), and steps per seed.
ifdef SEED
SEEDS ?= 1
else
SEED := 1
SEEDS ?= 100
endif
STEPS ?= 400
PLANT ?=

# How long each fuzz target runs under `make fuzz` (seconds).
FUZZ_SECONDS ?= 60

.PHONY: build-deps demo-cluster bench-cluster bench-scale simulate fuzz bench-console lint features-check demo test bench bench-kafka bench-alerts bench-idempotency check-toolchain tansu test-tools fmt-check

check-toolchain:
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "cargo is missing: install Rust from https://rustup.rs, then run make again" >&2; exit 1; }

tansu: check-toolchain
	@test -x "$(TANSU)" && "$(TANSU)" --version >/dev/null 2>&1 || { \
	  echo "installing the tansu Kafka broker $(TANSU_VERSION) (once; about 7 minutes)"; \
	  $(CARGO) install tansu --version $(TANSU_VERSION) --locked --features dynostore,libsql; }

## What the build needs besides Rust, from Debian's packages when missing: OpenSSL's headers
## and pkg-config (librdkafka is built with TLS to the brokers).
build-deps:
	@missing=""; command -v pkg-config >/dev/null 2>&1 || missing="$$missing pkg-config"; \
	  test -f /usr/include/openssl/ssl.h || missing="$$missing libssl-dev"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing$$missing (the build needs them)"; \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	  fi

## Tools the tests run besides the broker, from Debian's packages when missing: strace (the
## durability test watches the ledger's system calls), python3 (events/verify.py, the
## independent verifier), and chromium with chromium-driver and a CJK font (the console's
## test drives a real headless browser through WebDriver and saves screenshots), stunnel4 (TLS in
## front of the test broker, which has no TLS listener), openssl (the tests' certificates) and
## softhsm2 (a PKCS#11 token: the key store's test keeps its master keys in one).
test-tools: build-deps
	@missing=""; command -v strace >/dev/null 2>&1 || missing="$$missing strace"; \
	  command -v softhsm2-util >/dev/null 2>&1 || missing="$$missing softhsm2"; \
	  command -v stunnel4 >/dev/null 2>&1 || missing="$$missing stunnel4"; \
	  command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	  command -v python3 >/dev/null 2>&1 || missing="$$missing python3"; \
	  command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	  command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	  fc-list 2>/dev/null | grep -qi wenquanyi || missing="$$missing fonts-wqy-microhei"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing$$missing (the tests need them)"; \
	    if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	  fi

## The code is as rustfmt writes it (rustfmt.toml); the component is added when missing.
fmt-check: check-toolchain
	@$(CARGO) fmt --version >/dev/null 2>&1 || rustup component add rustfmt
	@$(CARGO) fmt --all --check || { echo "the code is not formatted: run cargo fmt --all" >&2; exit 1; }

## clippy finds nothing, in every target (the component is added when missing).
lint: check-toolchain build-deps
	@$(CARGO) clippy --version >/dev/null 2>&1 || rustup component add clippy
	@$(CARGO) clippy --locked --quiet --workspace --all-targets --features bindledger/simulation -- -D warnings

## The library and the audit tool build without their default features (no axum, no
## librdkafka), as ARCHITECTURE.md ("Features") promises; the binary builds without the
## feature simulation (no planted bugs), as a production build does.
features-check: check-toolchain build-deps
	@$(CARGO) check --locked --quiet -p bindledger --no-default-features
	@$(CARGO) check --locked --quiet -p bindledger --bins
	@$(CARGO) check --locked --quiet -p bindledger-replay --no-default-features
	@! $(CARGO) tree --locked -p bindledger-replay --no-default-features -e normal | grep -E '^.* (rdkafka|axum) ' \
	  || { echo "the audit tool without default features still depends on rdkafka or axum" >&2; exit 1; }

## The ledger with a demo workload, publishing to a Kafka broker started for the occasion.
demo: tansu build-deps
	$(CARGO) build --release --locked --workspace
	@set -e; \
	  "$(TANSU)" broker --listener-url tcp://127.0.0.1:$(DEMO_KAFKA_PORT) --advertised-listener-url tcp://127.0.0.1:$(DEMO_KAFKA_PORT) \
	    --storage-engine memory://tansu/ > target/tansu-demo.log 2>&1 & broker=$$!; \
	  trap 'kill $$broker 2>/dev/null' EXIT; \
	  BINDLEDGER_KAFKA_BROKERS=127.0.0.1:$(DEMO_KAFKA_PORT) ./target/release/bindledger demo

## The demo as a cluster of three shards in one process (the shard map on the broker started
## for the occasion; each shard its own port, log and topics).
demo-cluster: tansu build-deps
	$(CARGO) build --release --locked --workspace
	@set -e; \
	  "$(TANSU)" broker --listener-url tcp://127.0.0.1:$(DEMO_KAFKA_PORT) --advertised-listener-url tcp://127.0.0.1:$(DEMO_KAFKA_PORT) \
	    --storage-engine memory://tansu/ > target/tansu-demo.log 2>&1 & broker=$$!; \
	  trap 'kill $$broker 2>/dev/null' EXIT; \
	  BINDLEDGER_KAFKA_BROKERS=127.0.0.1:$(DEMO_KAFKA_PORT) ./target/release/bindledger demo --shards 3

## Every test: unit tests, and the integration tests against real sled files, the real HTTP
## server, a real Kafka broker process, and the real binary killed with SIGKILL.
test: tansu test-tools fmt-check lint features-check
	@mkdir -p target
	@set -o pipefail; TANSU="$(TANSU)" $(CARGO) test --workspace --locked --features bindledger/simulation 2>&1 | tee target/test-output.log; status=$$?; \
	  awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($$(i+1) ~ /^passed/) p += $$i; if ($$(i+1) ~ /^failed/) f += $$i } } \
	       END { printf "\n%d passed, %d failed\n", p, f }' target/test-output.log; exit $$status

## Raw sled baseline, library path and HTTP end to end, in one run.
bench: check-toolchain build-deps
	$(CARGO) run --release --locked -- bench

## Cost against the number of accounts: the library and HTTP paths, CPU per command, p50/p99
## and resident memory at each of SCALE_ACCOUNTS (10,000, 1,000,000 and 10,000,000 by
## default), with each command's account chosen in turn and from a Zipf distribution (exponent
## 1: a few hot accounts), one `bindledger bench` run each. The accounts are bound in bulk
## through the writer (1,000,000 in about 50 s, 10,000,000 in about 13 minutes, twice per run:
## the library's ledger and the HTTP one). Bound: about 65 minutes in all on 2 cores, 36 GB of
## disk at a time and 4 GB of memory at the largest; `SCALE_ACCOUNTS="10000 1000000"` takes
## about 6. The HTTP run sends 30,000 payments so that the setup's last writes weigh little.
SCALE_ACCOUNTS ?= 10000 1000000 10000000
bench-scale: check-toolchain build-deps
	$(CARGO) build --release --locked
	@for n in $(SCALE_ACCOUNTS); do for skew in "" "--zipf 1.0"; do \
	  echo "== $$n accounts $${skew:-(in turn)}"; \
	  /usr/bin/env time -f "max resident %M KB, %e s" ./target/release/bindledger bench --accounts $$n $$skew \
	    --lib-commands 40000 --lib-concurrency 64 --http-commands 30000 --http-connections 16 \
	    --raw-events 4000 --rounds 1 | grep -E '^(\| (library: Ledger|HTTP: POST)|Start and|Bytes per event)'; \
	done; done

## Alert latency through the live feed at 1,000 and 10,000 commands/s, and rule throughput
## over a stored log of 1,000,000 events against decoding alone.
bench-alerts: check-toolchain build-deps
	$(CARGO) run --release --locked -- bench-alerts

## The library path with the on-disk idempotency index against the in-memory one, with
## millions of live keys.
bench-idempotency: check-toolchain build-deps
	$(CARGO) run --release --locked -- bench-idempotency

## The Kafka relay against a raw producer on the same broker, and end-to-end lag.
bench-kafka: tansu build-deps
	$(CARGO) build --release --locked
	@set -e; \
	  "$(TANSU)" broker --listener-url tcp://127.0.0.1:$(DEMO_KAFKA_PORT) --advertised-listener-url tcp://127.0.0.1:$(DEMO_KAFKA_PORT) \
	    --storage-engine memory://tansu/ > target/tansu-bench.log 2>&1 & broker=$$!; \
	  trap 'kill $$broker 2>/dev/null' EXIT; sleep 1; \
	  ./target/release/bindledger bench-kafka --brokers 127.0.0.1:$(DEMO_KAFKA_PORT)

## Two shards of a cluster in one process: payments sent to their owners against all sent to
## one shard (forwarded), with the CPU each costs per request.
bench-cluster: tansu build-deps
	$(CARGO) build --release --locked
	@set -e; \
	  "$(TANSU)" broker --listener-url tcp://127.0.0.1:$(DEMO_KAFKA_PORT) --advertised-listener-url tcp://127.0.0.1:$(DEMO_KAFKA_PORT) \
	    --storage-engine memory://tansu/ > target/tansu-bench.log 2>&1 & broker=$$!; \
	  trap 'kill $$broker 2>/dev/null' EXIT; sleep 1; \
	  ./target/release/bindledger bench-cluster --brokers 127.0.0.1:$(DEMO_KAFKA_PORT)

## The console in a real headless Chromium against 1,000,000 alerts and an account of 100,000
## events (BENCH_ALERTS, BENCH_HISTORY; made through the ledger first, some minutes): first
## paint, then from a command's acknowledgement to its alert in the queue at 1,000 commands/s
## for 60 s (BENCH_RATE, BENCH_SECONDS; 3600 for an hour), and the page's memory.
bench-console: check-toolchain test-tools
	$(CARGO) test --release --locked --test console bench_the_console_at_a_million_alerts -- --ignored --nocapture

## The fuzz targets (fuzz/: the event decoder, the rules parser, the command bodies) under
## AFL++ through afl.rs, on the stable toolchain, FUZZ_SECONDS each (60 by default). Installs
## cargo-afl and builds AFL++ on first use (a few minutes, once). New inputs are kept in
## target/fuzz/<target>/; a crash fails the run and is listed: copy it into
## fuzz/corpus/<target>/ once fixed, where `make test` (tests/fuzz_corpus.rs) keeps it.
fuzz: check-toolchain build-deps
	@command -v cargo-afl >/dev/null 2>&1 || $(CARGO) install cargo-afl --locked
	@$(CARGO) afl config --build >/dev/null 2>&1 || true
	cd fuzz && $(CARGO) afl build --release --locked
	@set -e; failed=0; for t in decoder rules bodies; do \
	  out=target/fuzz/$$t; rm -rf $$out; mkdir -p $$out; \
	  echo "fuzzing $$t for $(FUZZ_SECONDS) s ..."; \
	  AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_QUIET=1 \
	    $(CARGO) afl fuzz -V $(FUZZ_SECONDS) -i fuzz/corpus/$$t -o $$out fuzz/target/release/$$t > $$out/afl.log 2>&1; \
	  grep -E '^(execs_done|execs_per_sec|corpus_count|saved_crashes)' $$out/default/fuzzer_stats | tr -s ' ' | sed 's/^/  /'; \
	  crashes=$$(ls $$out/default/crashes 2>/dev/null | grep -c '^id' || true); \
	  if [ "$$crashes" != 0 ]; then echo "  $$t: $$crashes crashing inputs in $$out/default/crashes" >&2; failed=1; fi; \
	done; exit $$failed

## The deterministic simulation of the ledger core (`bindledger simulate`): SEEDS seeds from
## SEED (100 from 1 by default; `make simulate SEED=17` replays seed 17 exactly), STEPS steps
## each, a line per seed. A failing seed prints how to replay it. `make test` runs seeds 1-12, seed 31 and four later seeds that change daily.
simulate: check-toolchain build-deps
	$(CARGO) build --release --locked --features simulation
	./target/release/bindledger simulate --seed $(SEED) --seeds $(SEEDS) --steps $(STEPS) $(if $(PLANT),--plant $(PLANT))
