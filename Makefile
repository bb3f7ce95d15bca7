# The two commands of the README:
#   make dev    set up, then run the local dev runner
#   make test   set up, build the static binaries, then run every test (what .ci/run calls)
# And, by hand:
#   make dist     the static binaries (musl, x86_64 and arm64) with cargo-zigbuild
#   make bench    set up, then run every benchmark into BENCHMARKS.md (about 40 min;
#                 never beside `make test`: Ray's `ray stop` kills every Ray process)
#   make mutants  mutation testing of the pure modules with their unit tests

.PHONY: setup dev dist test bench mutants

# Fully static binaries (musl: no interpreter, no shared library), so that one
# file runs in any Ray image, in a FROM scratch carrier, and on any glibc or
# none. cargo-zigbuild cross-links both architectures with zig; both tools
# come from PyPI into the venv, pinned: the Dockerfile's build stage uses the
# same pins. The set-up adds the two Rust targets.
ZIGLANG = ziglang==0.13.0
CARGO_ZIGBUILD = cargo-zigbuild==0.20.1
DIST_TARGETS = x86_64-unknown-linux-musl aarch64-unknown-linux-musl
DIST_BIN = target/x86_64-unknown-linux-musl/release/rayhead
DIST_BIN_ARM64 = target/aarch64-unknown-linux-musl/release/rayhead

setup:
	scripts/setup.sh

# The venv's ray first on PATH; any rayhead dev option after ARGS=, e.g.
#   make dev ARGS="--workers 2 --clean"
dev: setup
	PATH="$(CURDIR)/.venv/bin:$$PATH" target/release/rayhead dev $(ARGS)

dist: setup
	.venv/bin/pip install --quiet --disable-pip-version-check '$(ZIGLANG)' '$(CARGO_ZIGBUILD)'
	PATH="$(CURDIR)/.venv/bin:$$PATH" cargo zigbuild --release --locked $(addprefix --target ,$(DIST_TARGETS))
	@echo "static binaries: $(DIST_BIN) $(DIST_BIN_ARM64)"

# The suite checks the static binaries too (no interpreter, no shared library,
# the right machine), and runs the x86_64 one in real containers (podman).
test: setup dist
	cargo test --no-fail-fast

# The benchmarks' own needs (the timeline's plotting) stay out of the test set-up.
bench: setup
	.venv/bin/pip install --quiet --disable-pip-version-check 'matplotlib>=3.8,<4'
	.venv/bin/python bench/run.py

# The pure modules, each against its unit tests (--lib): a mutant that
# survives is behaviour no test pins down. Not part of `make test`.
MUTANT_FILES = src/config/*.rs src/redact.rs src/exit.rs src/probe/routes.rs src/probe/metrics.rs \
	src/redis/address.rs src/ray/command.rs src/sys/proctree.rs

mutants:
	command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants
	cargo mutants --no-shuffle --profile mutants -j 2 $(addprefix --file ,$(MUTANT_FILES)) -- --lib
