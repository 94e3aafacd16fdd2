# clipd — see README.md. Every target works on a fresh Debian 12 machine as root.
GO       ?= go
PREFIX   ?= /usr/local
DESTDIR  ?=
BIN      := bin/clipd
VERSION  := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)

.PHONY: build test demo install uninstall lint clean deps

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/clipd

# Unit, integration and end-to-end tests. They need root, /dev/fuse and the
# Debian packages that `make deps` installs; they fail (not skip) without them.
test: build
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 28m ./...

# Index a real image, mount it through the daemon's socket and run python3 in it.
demo: build
	scripts/demo.sh

deps:
	scripts/install-deps.sh

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/clipd
	install -D -m 0644 config.toml.example $(DESTDIR)/etc/clipd/config.toml.example

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/clipd $(DESTDIR)/etc/clipd/config.toml.example

clean:
	rm -rf bin tmp
