# The two commands of the README:
#   make dev    set up, then run the local dev runner
#   make test   set up, then run every test (what .ci/run calls)

.PHONY: setup dev test

setup:
	scripts/setup.sh

dev: setup
	scripts/dev.sh

test: setup
	cargo test --no-fail-fast
