# clipd — see README.md. Every target works on a fresh Debian 12 machine as root.
GO       ?= go
PREFIX   ?= /usr/local
DESTDIR  ?=
BIN      := bin/clipd
VERSION  := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)

.PHONY: build test demo install uninstall lint race tools clean deps

# staticcheck, pinned: 0.8.x (2026.2) is the first release that reads Go 1.26
# code. The binary's name carries the version so that a bump reinstalls it.
STATICCHECK_VERSION := v0.8.2
STATICCHECK         := bin/tools/staticcheck-$(STATICCHECK_VERSION)
# Unit packages: everything but the end-to-end tests and the benchmark's
# command (no tests; it needs runc).
UNIT_PKGS = $$($(GO) list ./... | grep -v -e '/e2e$$' -e '/bench/cmd/')

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/clipd

# Unit, integration and end-to-end tests. They need root, /dev/fuse and the
# Debian packages that `make deps` installs (first, when missing); they fail
# (not skip) without them.
test: build deps
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 28m ./...

# Index a real image, mount it through the daemon's socket and run python3 in it.
demo: build deps
	scripts/demo.sh

deps:
	scripts/install-deps.sh

# Cold-start benchmark (bench/README.md): writes bench/results/latest.{json,md,png}.
# About 8-15 minutes; `make bench QUICK=1` takes under 2. Not part of `make test`.
.PHONY: bench
bench: build deps
	@command -v runc >/dev/null && command -v gnuplot >/dev/null || { \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends runc gnuplot-nox; }
	$(GO) run ./bench/cmd/clipbench -clipd $(BIN) $(if $(filter 1 yes true,$(QUICK)),-quick)

# gofmt (fails listing the files it would change), merge conflict markers
# left in any tracked file (one sat in the usage text, a string literal the
# compiler accepts; a line of = alone is left to Markdown), go vet and
# staticcheck.
lint: $(STATICCHECK)
	@out="$$(gofmt -l $$(git ls-files '*.go'))"; if [ -n "$$out" ]; then echo "gofmt -l:"; echo "$$out"; exit 1; fi
	@if git grep -nE '^(<<<<<<<|>>>>>>>) ' -- . ':!*.png'; then echo "merge conflict markers (above)"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

# The unit packages under the race detector (the end-to-end tests run in
# `make test`; under -race they would take most of CI's half hour).
race: deps
	$(GO) test -race -count=1 -timeout 20m $(UNIT_PKGS)

tools: $(STATICCHECK)

$(STATICCHECK):
	mkdir -p bin/tools
	GOBIN=$(CURDIR)/bin/tools $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv bin/tools/staticcheck $@

# Installs the binary, the systemd units, the tmpfiles.d and sysusers.d
# entries and the example config. Packagers set DESTDIR; PREFIX=/usr puts the
# units in /usr/lib/systemd/system. Then: systemd-sysusers; systemd-tmpfiles
# --create clipd.conf; systemctl daemon-reload; systemctl enable --now
# clipd.socket clipd.service.
UNITDIR     ?= $(PREFIX)/lib/systemd/system
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/clipd
	install -D -m 0644 config.toml.example $(DESTDIR)/etc/clipd/config.toml.example
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed 's|/usr/local/bin/clipd|$(PREFIX)/bin/clipd|g' systemd/clipd.service > $(DESTDIR)$(UNITDIR)/clipd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/clipd.service
	install -m 0644 systemd/clipd.socket $(DESTDIR)$(UNITDIR)/clipd.socket
	install -D -m 0644 systemd/clipd.tmpfiles.conf $(DESTDIR)$(TMPFILESDIR)/clipd.conf
	install -D -m 0644 systemd/clipd.sysusers.conf $(DESTDIR)$(SYSUSERSDIR)/clipd.conf

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/clipd $(DESTDIR)/etc/clipd/config.toml.example \
	  $(DESTDIR)$(UNITDIR)/clipd.service $(DESTDIR)$(UNITDIR)/clipd.socket \
	  $(DESTDIR)$(TMPFILESDIR)/clipd.conf $(DESTDIR)$(SYSUSERSDIR)/clipd.conf

clean:
	rm -rf bin tmp
