package fetcher

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Registry hosts in containerd's hosts.toml format, read from a directory
// laid out like containerd's certs.d: <dir>/<registry host>/hosts.toml
// (for example <dir>/docker.io/hosts.toml or <dir>/localhost:5000/hosts.toml),
// and <dir>/_default/hosts.toml for every registry without its own file.
//
//	server = "https://registry.example.com"
//	[host."http://cache.local:5000"]
//	  capabilities = ["pull", "resolve"]
//	  ca = "/etc/clipd/cache-ca.pem"
//	  client = [["/etc/clipd/client.pem", "/etc/clipd/client.key"]]
//	  skip_verify = false
//	  override_path = false
//	  [host."http://cache.local:5000".header]
//	    x-mirror = "clipd"
//
// The hosts are tried in the order of the file, the server last.

// Capabilities of a registry host, as containerd names them: pull fetches
// blobs and manifests by digest, resolve turns a tag into a digest.
const (
	CapPull    = "pull"
	CapResolve = "resolve"
	CapPush    = "push"
)

// RegistryHost is one place a registry's content can be read from.
type RegistryHost struct {
	// URL is scheme://host[:port][/path]; Path is the prefix that replaces
	// "/v2" of the registry API (…/v2 unless override_path).
	URL          *url.URL
	Capabilities []string
	Header       http.Header
	// TLS is nil when the host needs no settings of its own.
	TLS *tls.Config
}

// Can reports whether the host has capability c.
func (h *RegistryHost) Can(c string) bool {
	for _, x := range h.Capabilities {
		if x == c {
			return true
		}
	}
	return false
}

// HostsConfig maps registry hosts ("docker.io", "localhost:5000") to the
// ordered hosts that serve them.
type HostsConfig struct {
	Dir string
	// byRegistry holds each registry's hosts, its server last; "_default"
	// applies to registries without a file.
	byRegistry map[string][]*RegistryHost
	state      *hostState
}

// NewHostsConfig returns the configuration of hosts by registry
// ("_default" included), each list in the order to try it.
func NewHostsConfig(byRegistry map[string][]*RegistryHost) *HostsConfig {
	return &HostsConfig{byRegistry: byRegistry, state: &hostState{
		backoff: DefaultHostBackoff, now: time.Now,
		down: map[string]time.Time{}, perTLS: map[*RegistryHost]http.RoundTripper{},
	}}
}

// SetBackoff sets how long a failed host is passed over (DefaultHostBackoff
// unless set).
func (c *HostsConfig) SetBackoff(d time.Duration) { c.state.backoff = d }

// Hosts returns the hosts of registry (host[:port]) in the order to try
// them, or nil when no file configures it.
func (c *HostsConfig) Hosts(registry string) []*RegistryHost {
	if c == nil {
		return nil
	}
	if hs, ok := c.byRegistry[registry]; ok {
		return hs
	}
	if hs, ok := c.byRegistry["_default"]; ok {
		// _default has no server of its own: the registry itself is the
		// fallback.
		return hs
	}
	return nil
}

// LoadHostsDir reads every <dir>/<registry>/hosts.toml. An empty dir is no
// configuration (nil, nil); a missing dir is an error, since the operator
// asked for it.
func LoadHostsDir(dir string) (*HostsConfig, error) {
	if dir == "" {
		return nil, nil
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("registry hosts directory: %w", err)
	}
	c := NewHostsConfig(map[string][]*RegistryHost{})
	c.Dir = dir
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name(), "hosts.toml")
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("registry hosts: %w", err)
		}
		hs, err := ParseHosts(e.Name(), b, filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("registry hosts %s: %w", p, err)
		}
		c.byRegistry[e.Name()] = hs
	}
	return c, nil
}

type hostsFile struct {
	Server       string                    `toml:"server"`
	Capabilities []string                  `toml:"capabilities"`
	CA           any                       `toml:"ca"`
	Client       any                       `toml:"client"`
	SkipVerify   *bool                     `toml:"skip_verify"`
	Header       map[string]any            `toml:"header"`
	OverridePath bool                      `toml:"override_path"`
	Host         map[string]hostsFileEntry `toml:"host"`
}

type hostsFileEntry struct {
	Capabilities []string       `toml:"capabilities"`
	CA           any            `toml:"ca"`
	Client       any            `toml:"client"`
	SkipVerify   *bool          `toml:"skip_verify"`
	Header       map[string]any `toml:"header"`
	OverridePath bool           `toml:"override_path"`
}

// ParseHosts parses one hosts.toml for registry; relative paths (ca,
// client) are taken from base, the file's directory. The result lists the
// [host] entries in file order, then the server: the server is "server =",
// else https://<registry> (registry-1.docker.io for docker.io); _default
// gets no server.
func ParseHosts(registry string, b []byte, base string) ([]*RegistryHost, error) {
	var f hostsFile
	md, err := toml.Decode(string(b), &f)
	if err != nil {
		return nil, err
	}
	var out []*RegistryHost
	seen := map[string]bool{}
	// The order of [host."…"] tables is the order of the file, which a Go
	// map forgets: the metadata keeps it.
	for _, k := range md.Keys() {
		if len(k) != 2 || k[0] != "host" || seen[k[1]] {
			continue
		}
		seen[k[1]] = true
		e := f.Host[k[1]]
		h, err := newRegistryHost(k[1], e.Capabilities, e.CA, e.Client, e.SkipVerify, e.Header, e.OverridePath, base)
		if err != nil {
			return nil, fmt.Errorf("host %q: %w", k[1], err)
		}
		out = append(out, h)
	}
	server := f.Server
	if server == "" && registry != "_default" {
		server = "https://" + registry
		if registry == "docker.io" {
			server = "https://registry-1.docker.io"
		}
	}
	if server != "" {
		caps := f.Capabilities
		if len(caps) == 0 {
			caps = []string{CapPull, CapResolve, CapPush}
		}
		h, err := newRegistryHost(server, caps, f.CA, f.Client, f.SkipVerify, f.Header, f.OverridePath, base)
		if err != nil {
			return nil, fmt.Errorf("server %q: %w", server, err)
		}
		out = append(out, h)
	}
	return out, nil
}

func newRegistryHost(raw string, caps []string, ca, client any, skipVerify *bool, header map[string]any, overridePath bool, base string) (*RegistryHost, error) {
	if !strings.Contains(raw, "://") {
		raw = "https://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("scheme %q is not http or https", u.Scheme)
	}
	if u.Host == "" {
		return nil, errors.New("no host")
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	if !overridePath && !strings.HasSuffix(u.Path, "/v2") {
		u.Path += "/v2"
	}
	if len(caps) == 0 {
		caps = []string{CapPull, CapResolve, CapPush}
	}
	for _, c := range caps {
		if c != CapPull && c != CapResolve && c != CapPush {
			return nil, fmt.Errorf("unknown capability %q", c)
		}
	}
	h := &RegistryHost{URL: u, Capabilities: caps, Header: http.Header{}}
	for k, v := range header {
		switch v := v.(type) {
		case string:
			h.Header.Add(k, v)
		case []any:
			for _, x := range v {
				s, ok := x.(string)
				if !ok {
					return nil, fmt.Errorf("header %q: %v is not a string", k, x)
				}
				h.Header.Add(k, s)
			}
		default:
			return nil, fmt.Errorf("header %q: %v is not a string or a list of strings", k, v)
		}
	}
	h.TLS, err = hostTLS(ca, client, skipVerify, base)
	if err != nil {
		return nil, err
	}
	return h, nil
}

// hostTLS builds the TLS settings of a host: ca is a path or a list of
// paths, client a path (certificate and key in one file), a [cert, key]
// pair or a list of pairs, as containerd accepts them.
func hostTLS(ca, client any, skipVerify *bool, base string) (*tls.Config, error) {
	if ca == nil && client == nil && skipVerify == nil {
		return nil, nil
	}
	abs := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(base, p)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if skipVerify != nil {
		cfg.InsecureSkipVerify = *skipVerify
	}
	cas, err := stringList(ca)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	if len(cas) > 0 {
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		for _, p := range cas {
			b, err := os.ReadFile(abs(p))
			if err != nil {
				return nil, fmt.Errorf("ca: %w", err)
			}
			if !pool.AppendCertsFromPEM(b) {
				return nil, fmt.Errorf("ca %s: no PEM certificate", p)
			}
		}
		cfg.RootCAs = pool
	}
	var pairs [][2]string
	switch v := client.(type) {
	case nil:
	case string:
		pairs = append(pairs, [2]string{v, v})
	case []any:
		if len(v) == 2 {
			if c, ok := v[0].(string); ok {
				k, ok := v[1].(string)
				if !ok {
					return nil, errors.New("client: [cert, key] must be strings")
				}
				pairs = append(pairs, [2]string{c, k})
				break
			}
		}
		for _, x := range v {
			switch x := x.(type) {
			case string:
				pairs = append(pairs, [2]string{x, x})
			case []any:
				s, err := stringList(x)
				if err != nil || len(s) != 2 {
					return nil, errors.New("client: each entry is a [cert, key] pair")
				}
				pairs = append(pairs, [2]string{s[0], s[1]})
			default:
				return nil, fmt.Errorf("client: %v is not a path or a [cert, key] pair", x)
			}
		}
	default:
		return nil, fmt.Errorf("client: %v is not a path or a list", v)
	}
	for _, p := range pairs {
		cert, err := tls.LoadX509KeyPair(abs(p[0]), abs(p[1]))
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = append(cfg.Certificates, cert)
	}
	return cfg, nil
}

func stringList(v any) ([]string, error) {
	switch v := v.(type) {
	case nil:
		return nil, nil
	case string:
		return []string{v}, nil
	case []any:
		out := make([]string, 0, len(v))
		for _, x := range v {
			s, ok := x.(string)
			if !ok {
				return nil, fmt.Errorf("%v is not a string", x)
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%v is not a string or a list of strings", v)
}
