package fetcher

import (
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
)

// CheckAccess fails only on a definite refusal: missing or wrong
// credentials against a token-authenticated registry give an
// *AccessDeniedError naming the registry; the right ones, a registry that
// is down and one that stalls do not (the mount goes on, lazily).
func TestCheckAccess(t *testing.T) {
	reg := testenv.StartRegistry(t)
	fix := makeFixture(t)
	fix.push(t, reg+"/test/img:v1")
	gate := startTokenGate(t, reg, "alice", "s3cret")
	t.Setenv("DOCKER_CONFIG", t.TempDir()) // no daemon-wide credentials
	quiet := slog.New(slog.DiscardHandler)
	check := func(host string, opts Options) error {
		t.Helper()
		opts.Logger = quiet
		f, _ := newFetcher(t, t.TempDir(), opts)
		a := fix.archive(index.Source{Registry: host, Repository: "test/img", Reference: "v1"})
		return f.CheckAccess(t.Context(), a)
	}

	var denied *AccessDeniedError
	for name, opts := range map[string]Options{
		"no credentials":    {},
		"wrong credentials": {Keychain: Credentials{Username: "alice", Password: "wrong"}.Keychain()},
	} {
		err := check(gate, opts)
		if !errors.As(err, &denied) || denied.Status != http.StatusUnauthorized || !strings.Contains(err.Error(), gate) {
			t.Errorf("%s: %v, want a 401 AccessDeniedError naming %s", name, err, gate)
		}
	}
	if err := check(gate, Options{Keychain: Credentials{Username: "alice", Password: "s3cret"}.Keychain()}); err != nil {
		t.Errorf("right credentials: %v", err)
	}
	if err := check(reg, Options{}); err != nil {
		t.Errorf("anonymous registry: %v", err)
	}

	dead := httptest.NewServer(http.NotFoundHandler())
	deadHost := strings.TrimPrefix(dead.URL, "http://")
	dead.Close()
	if err := check(deadHost, Options{}); err != nil {
		t.Errorf("registry down: %v, want no error (lazy)", err)
	}

	p := testenv.StartFaultProxy(t, reg)
	p.SetFault("", testenv.Stall())
	start := time.Now()
	err := check(p.Addr, Options{FetchTimeout: 3 * time.Second})
	t.Logf("stalled registry: check returned %v after %s", err, time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Errorf("stalled registry: %v, want no error (lazy)", err)
	}

	// With a manifest digest the check asks the manifest, never a blob: a
	// pull-through cache copies a whole blob from upstream on any request
	// for it. Against the token gate, the manifest answers the same 401.
	dg, err := fix.img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, manifest string
		opts           Options
		denied         bool
	}{
		{"manifest, right credentials", dg.String(), Options{Keychain: Credentials{Username: "alice", Password: "s3cret"}.Keychain()}, false},
		{"manifest, no credentials", dg.String(), Options{}, true},
		{"manifest unknown to the registry", "sha256:" + strings.Repeat("0", 64), Options{Keychain: Credentials{Username: "alice", Password: "s3cret"}.Keychain()}, false},
	} {
		gp := testenv.StartFaultProxy(t, reg) // sees what the gate lets through
		g := startTokenGate(t, gp.Addr, "alice", "s3cret")
		c.opts.Logger = quiet
		f, _ := newFetcher(t, t.TempDir(), c.opts)
		err := f.CheckAccess(t.Context(), fix.archive(index.Source{Registry: g, Repository: "test/img", Reference: "v1", Manifest: c.manifest}))
		if got := errors.As(err, &denied); got != c.denied {
			t.Errorf("%s: %v, want denied=%v", c.name, err, c.denied)
		}
		if n := len(gp.Requests("/blobs/")); n != 0 || (!c.denied && len(gp.Requests("/manifests/"+c.manifest)) != 1) {
			t.Errorf("%s: %d blob requests, %+v: want one HEAD of the manifest and no blob", c.name, n, gp.Requests(""))
		}
	}

	// A layout archive has no registry to ask.
	a := fix.archive(index.Source{Layout: "/nonexistent", Repository: "test/img"})
	f, _ := newFetcher(t, t.TempDir(), Options{Logger: quiet})
	if err := f.CheckAccess(t.Context(), a); err != nil {
		t.Errorf("layout archive: %v", err)
	}
}

// BenchmarkCheckAccess measures what the access check costs a mount. Each
// iteration is a new Fetcher, as each mount is a new serving process:
// "ping" is what the first read pays anyway (go-containerregistry's ping,
// and the token with credentials), "check" is the whole check (the ping
// and the token, kept for the reads, then one HEAD); their difference is
// the latency the check adds to a mount.
func BenchmarkCheckAccess(b *testing.B) {
	reg := testenv.StartRegistry(b)
	fix := makeFixture(b)
	fix.push(b, reg+"/test/img:v1")
	gate := startTokenGate(b, reg, "alice", "s3cret")
	creds := Credentials{Username: "alice", Password: "s3cret"}.Keychain()
	quiet := slog.New(slog.DiscardHandler)
	for _, c := range []struct {
		name string
		host string
	}{{"anonymous", reg}, {"token", gate}} {
		a := fix.archive(index.Source{Registry: c.host, Repository: "test/img", Reference: "v1"})
		b.Run(c.name+"/ping", func(b *testing.B) {
			for b.Loop() {
				f, _ := newFetcher(b, b.TempDir(), Options{Keychain: creds, Logger: quiet})
				blob, err := f.registryBlob(a.Source, a.Layers[0], &counters{})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := f.transport(b.Context(), blob.repo); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.name+"/check", func(b *testing.B) {
			for b.Loop() {
				f, _ := newFetcher(b, b.TempDir(), Options{Keychain: creds, Logger: quiet})
				if err := f.CheckAccess(b.Context(), a); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
