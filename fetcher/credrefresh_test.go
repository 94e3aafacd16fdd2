package fetcher

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
	"github.com/google/go-containerregistry/pkg/authn"
)

// expiringGate is a bearer-token gate whose tokens expire when told, and
// whose password can change (credentials a helper hands out expire too).
type expiringGate struct {
	addr string
	mu   sync.Mutex
	pass string
	gen  int // tokens of older generations are expired
	// tokens counts token exchanges, unauthorized the 401s sent.
	tokens, unauthorized atomic.Int64
}

func startExpiringGate(t *testing.T, registry, pass string) *expiringGate {
	t.Helper()
	g := &expiringGate{pass: pass}
	target, _ := url.Parse("http://" + registry)
	rp := httputil.NewSingleHostReverseProxy(target)
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		pass, tok := g.pass, fmt.Sprintf("token-%d", g.gen)
		g.mu.Unlock()
		if r.URL.Path == "/token" {
			u, p, ok := r.BasicAuth()
			if !ok || u != "alice" || p != pass {
				http.Error(w, "bad credentials", http.StatusUnauthorized)
				return
			}
			g.tokens.Add(1)
			json.NewEncoder(w).Encode(map[string]string{"token": tok})
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+tok {
			g.unauthorized.Add(1)
			// A host name: go-containerregistry refuses a token service at a
			// private IP literal other than the registry's own address.
			realm := strings.Replace(srv.URL, "127.0.0.1", "localhost", 1) + "/token"
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`",service="clipd-test",scope="repository:test/img:pull"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	g.addr = strings.TrimPrefix(srv.URL, "http://")
	return g
}

// rotate expires every token and changes the password.
func (g *expiringGate) rotate(pass string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gen++
	g.pass = pass
}

// helperKeychain stands for a docker credential helper: it hands out the
// current password and counts how often it is asked.
type helperKeychain struct {
	pass  atomic.Value
	calls atomic.Int64
}

func (k *helperKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	k.calls.Add(1)
	return authn.FromConfig(authn.AuthConfig{Username: "alice", Password: k.pass.Load().(string)}), nil
}

// A long-lived mount whose token expires gets a new one on the 401, and
// the keychain (a credential helper) is asked again for credentials when
// the ones it gave are older than the credential ttl: a password that
// changed meanwhile is used for the new token.
func TestTokenRefreshedWithFreshCredentials(t *testing.T) {
	reg := testenv.StartRegistry(t)
	fix := makeFixture(t)
	fix.push(t, reg+"/test/img:v1")
	gate := startExpiringGate(t, reg, "first")
	kc := &helperKeychain{}
	kc.pass.Store("first")

	f, _ := newFetcher(t, t.TempDir(), Options{Keychain: kc})
	// Credentials count as old at once, as they would after the ttl.
	f.credTTL = 0
	a := indexedArchive(t, fix, index.Source{Registry: gate.addr, Repository: "test/img", Reference: "v1"}, 64<<10)
	ls := openLayers(t, f, a)
	l := fix.layers[0]
	read := func(off int64) {
		t.Helper()
		buf := make([]byte, 4096)
		if _, err := ls.ReaderAt(0).ReadAt(buf, off); err != nil || !bytes.Equal(buf, l.tar[off:off+4096]) {
			t.Fatalf("read at %d: %v", off, err)
		}
	}
	read(1000)
	tokens, calls := gate.tokens.Load(), kc.calls.Load()

	gate.rotate("second")
	kc.pass.Store("second")
	before := gate.unauthorized.Load()
	read(int64(len(l.tar)) - 5000)
	if gate.unauthorized.Load() == before {
		t.Fatal("the read after the token expired was not challenged: the test proves nothing")
	}
	if gate.tokens.Load() == tokens {
		t.Fatal("no new token was fetched after the 401")
	}
	if kc.calls.Load() == calls {
		t.Fatal("the keychain was not asked again for the new token")
	}
	t.Logf("token exchanges %d, keychain calls %d, 401s %d", gate.tokens.Load(), kc.calls.Load(), gate.unauthorized.Load())
}

// Within the ttl the keychain is not asked again (a registry speaking
// basic auth asks for credentials on every request); after it, it is; a
// keychain failing later keeps the last credentials.
func TestFreshAuthTTL(t *testing.T) {
	kc := &helperKeychain{}
	kc.pass.Store("one")
	a, err := newFreshAuth(kc, nil, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1000, 0)
	a.now = func() time.Time { return now }
	a.at = now
	for range 5 {
		if c, err := a.Authorization(); err != nil || c.Password != "one" {
			t.Fatalf("within the ttl: %v %v", c, err)
		}
	}
	if n := kc.calls.Load(); n != 1 {
		t.Fatalf("keychain asked %d times within the ttl, want 1", n)
	}
	kc.pass.Store("two")
	now = now.Add(time.Minute)
	if c, err := a.Authorization(); err != nil || c.Password != "two" {
		t.Fatalf("after the ttl: %v %v", c, err)
	}
	now = now.Add(time.Minute)
	a.kc = failingKeychain{}
	if c, err := a.Authorization(); err != nil || c.Password != "two" {
		t.Fatalf("keychain failing: %v %v", c, err)
	}
}

type failingKeychain struct{}

func (failingKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return nil, fmt.Errorf("helper failed")
}

// A mirror that asks for a bearer token (its own token service) gets one:
// the ping and the token exchange go to the first host, as they would to
// the registry; an expired token is refreshed on the mirror's 401.
func TestMirrorTokenChallenge(t *testing.T) {
	e := newEnv(t)
	gate := startExpiringGate(t, e.proxy.Addr, "pw")
	kc := &helperKeychain{}
	kc.pass.Store("pw")
	hs, err := ParseHosts(e.src.Registry, []byte(`server = "http://`+e.src.Registry+`"
[host."http://`+gate.addr+`"]
`), "")
	if err != nil {
		t.Fatal(err)
	}
	f, _ := newFetcher(t, t.TempDir(), Options{Keychain: kc, Hosts: NewHostsConfig(map[string][]*RegistryHost{e.src.Registry: hs})})
	a := indexedArchive(t, e.fix, e.src, 64<<10)
	ls := openLayers(t, f, a)
	l := e.fix.layers[0]
	read := func(off int64) {
		t.Helper()
		buf := make([]byte, 4096)
		if _, err := ls.ReaderAt(0).ReadAt(buf, off); err != nil || !bytes.Equal(buf, l.tar[off:off+4096]) {
			t.Fatalf("read at %d through the gated mirror: %v", off, err)
		}
	}
	read(1000)
	if gate.tokens.Load() == 0 {
		t.Fatal("no token was fetched from the mirror's token service")
	}
	gate.rotate("pw")
	before := gate.unauthorized.Load()
	tokens := gate.tokens.Load()
	read(int64(len(l.tar)) - 5000)
	if gate.unauthorized.Load() == before || gate.tokens.Load() == tokens {
		t.Fatal("the expired token was not challenged and refreshed")
	}
}

// One token serves every host of a hosts.toml (README, "Mirrors"): an
// anonymous cache in front of a registry that wants a bearer token works
// while the cache serves, and when the registry answered the ping first;
// but when the cache answered it, the process authenticates as for an
// anonymous registry and a failover to the registry gets 401. This pins
// that limitation: per-host authentication would turn the last read into a
// success (and this test, and the README, must then change).
func TestMirrorTokenSharedByHosts(t *testing.T) {
	for _, cacheFirst := range []bool{true, false} {
		reg := testenv.StartRegistry(t)
		fix := makeFixture(t)
		fix.push(t, reg+"/test/img:v1")
		gate := startTokenGate(t, reg, "alice", "s3cret")
		cache := testenv.StartFaultProxy(t, reg) // anonymous, like a pull-through cache
		hs, err := ParseHosts(gate, []byte(`server = "http://`+gate+`"
[host."http://`+cache.Addr+`"]
`), "")
		if err != nil {
			t.Fatal(err)
		}
		hosts := NewHostsConfig(map[string][]*RegistryHost{gate: hs})
		f, _ := newFetcher(t, t.TempDir(), Options{Hosts: hosts, Keychain: Credentials{Username: "alice", Password: "s3cret"}.Keychain(),
			Logger: slog.New(slog.DiscardHandler)})
		a := indexedArchive(t, fix, index.Source{Registry: gate, Repository: "test/img", Reference: "v1"}, 64<<10)
		if !cacheFirst {
			cache.SetFault("", testenv.Status(http.StatusBadGateway))
		}
		ls := openLayers(t, f, a)
		l := fix.layers[0]
		buf := make([]byte, 4096)
		if _, err := ls.ReaderAt(0).ReadAt(buf, 1000); err != nil || !bytes.Equal(buf, l.tar[1000:1000+4096]) {
			t.Fatalf("cache first %v: first read: %v", cacheFirst, err)
		}
		// Now the other host serves.
		if cacheFirst {
			cache.SetFault("", testenv.Status(http.StatusBadGateway))
		} else {
			cache.Clear()
			hosts.state.mu.Lock()
			clear(hosts.state.down)
			hosts.state.mu.Unlock()
		}
		off := int64(len(l.tar)) - 5000
		_, err = ls.ReaderAt(0).ReadAt(buf, off)
		t.Logf("cache answered the ping %v: read from the other host: %v", cacheFirst, err)
		switch {
		case cacheFirst && (err == nil || !strings.Contains(err.Error(), "401")):
			t.Errorf("failover to the token registry after the anonymous cache answered the ping: %v, want the 401 the README describes", err)
		case !cacheFirst && (err != nil || !bytes.Equal(buf, l.tar[off:off+4096])):
			t.Errorf("the cache, sent the registry's token: %v", err)
		}
	}
}
