# Build, test, benchmark and demo. The test, bench and demo targets install the Debian
# packages they need first (scripts/install-deps.sh; needs root, as do the tests themselves).

CARGO  ?= cargo
PREFIX ?= /usr/local

.PHONY: all build deps guest-image test bench demo demo-network install clean

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
	$(CARGO) bench -p shim --bench sandbox
	$(CARGO) bench -p shim --bench workload
	$(CARGO) bench -p shim --bench network_features
	$(CARGO) bench -p shim --bench pods
	$(CARGO) bench -p shim --bench datapath
	$(CARGO) build --release -p kata-runtime
	# The churn, long: 100 pods with faults; then plain, 1, 4 and 8 at a time (pods per minute).
	KATA_NET_CHURN_PODS=100 $(CARGO) test --release -p shim --test churn -- --nocapture --test-threads=1 pods_churned
	# The same on containerd 2.1 (install-deps unpacks it beside the system's 1.6).
	KATA_NET_TEST_CONTAINERD_BIN=/var/lib/kata-net-test/containerd-2.1/usr/bin KATA_NET_CHURN_PODS=100 \
	  $(CARGO) test --release -p shim --test churn -- --nocapture --test-threads=1 pods_churned
	for n in 1 4 8; do KATA_NET_CHURN_FAULTS=off KATA_NET_CHURN_AT_ONCE=$$n KATA_NET_CHURN_PODS=$$((n * 4)) \
	  $(CARGO) test --release -p shim --test churn -- --nocapture --test-threads=1 pods_churned || exit 1; done
	$(CARGO) build --release -p kata-runtime
	$(CARGO) bench -p shim --bench mgmt

demo: deps guest-image
	$(CARGO) build --release -p shim -p kata-runtime
	./scripts/demo.sh

demo-network: deps
	$(CARGO) build --release -p kata-runtime -p tests --bins
	./target/release/net-demo

install: build guest-image
	install -D -m 0755 target/release/kata-runtime $(DESTDIR)$(PREFIX)/bin/kata-runtime
	install -D -m 0755 target/release/containerd-shim-kata-v2 $(DESTDIR)$(PREFIX)/bin/containerd-shim-kata-v2
	install -D -m 0644 target/guest-image/vmlinuz $(DESTDIR)/usr/share/kata-net-rs/vmlinuz
	install -D -m 0644 target/guest-image/initrd.img $(DESTDIR)/usr/share/kata-net-rs/initrd.img
	install -D -m 0644 target/guest-image/rootfs.img $(DESTDIR)/usr/share/kata-net-rs/rootfs.img
	install -D -m 0644 target/guest-image/boot-initrd.img $(DESTDIR)/usr/share/kata-net-rs/boot-initrd.img
	if [ -f target/guest-image/initrd-kata.img ]; then \
	  install -D -m 0644 target/guest-image/initrd-kata.img $(DESTDIR)/usr/share/kata-net-rs/initrd-kata.img; fi

clean:
	$(CARGO) clean
