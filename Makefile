# Build, test, benchmark and demo. The test, bench and demo targets install the Debian
# packages they need first (scripts/install-deps.sh; needs root, as do the tests themselves).

CARGO  ?= cargo
PREFIX ?= /usr/local

.PHONY: all build deps guest-image test bench demo install clean

all: build

build:
	$(CARGO) build --release --workspace

deps:
	./scripts/install-deps.sh

guest-image: deps
	./scripts/build-guest-image.sh

test: deps guest-image
	./scripts/run-tests.sh

bench: deps guest-image
	$(CARGO) bench -p tests

demo: deps
	$(CARGO) build --release -p shim -p tests --bins
	./target/release/net-demo

install: build
	install -D -m 0755 target/release/kata-runtime $(DESTDIR)$(PREFIX)/bin/kata-runtime

clean:
	$(CARGO) clean
