# The two commands of the README:
#   make dev    set up, then run the local dev runner
#   make test   set up, then run every test (what .ci/run calls)

# The command the dev runner supervises, until `rayhead dev` lands.
DEV_CMD ?= sh -c 'echo "rayhead supervises this shell as PID 1; Ctrl-C stops it"; exec sleep infinity'

.PHONY: setup dev test

setup:
	scripts/setup.sh

dev: setup
	target/release/rayhead run -- $(DEV_CMD)

test: setup
	cargo test --no-fail-fast
