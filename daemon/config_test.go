package daemon

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultConfig(t *testing.T) {
	cfg, err := LoadConfig("")
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.Daemon
	if d.Socket != "/run/clipd/clipd.sock" || d.StateDir != "/var/lib/clipd" ||
		!reflect.DeepEqual(d.MountRoots, []string{"/run/clipd/mnt"}) || d.LogLevel != "info" {
		t.Errorf("daemon defaults: %+v", d)
	}
	if cfg.Cache.Dir != "/var/cache/clipd" || cfg.Cache.MaxSize != 20*GiB || cfg.Cache.MinFree != 2*GiB {
		t.Errorf("cache defaults: %+v", cfg.Cache)
	}
	if len(cfg.Registry.Insecure) != 0 || len(d.AllowedUIDs) != 0 || len(d.AllowedGIDs) != 0 || d.SocketGroup != "" {
		t.Errorf("empty lists expected: %+v %+v", d, cfg.Registry)
	}
	if d.ServeOOMScoreAdj != 0 || d.ServeMemoryLimit != GiB {
		t.Errorf("serving process limits: oom_score_adj %d, memory %s; want 0 and 1GiB", d.ServeOOMScoreAdj, d.ServeMemoryLimit)
	}
	if !cfg.Daemon.SpareServingProcess {
		t.Errorf("daemon.spare_serving_process defaults to false, want true")
	}
	if p := cfg.Prefetch; p.RecordSeconds.Std() != 30*time.Second || !p.Replay {
		t.Errorf("prefetch defaults: %+v, want record_seconds 30s, replay true", p)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
}

func TestLoadFullConfig(t *testing.T) {
	p := writeConfig(t, `
[daemon]
socket       = "/tmp/x/clipd.sock"
state_dir    = "/tmp/x/state"
mount_roots  = ["/tmp/x/mnt", "/mnt/images"]
log_level    = "debug"
allowed_uids = [1000, 1001]
allowed_gids = [50]
socket_group = "clipd"
serve_oom_score_adj = 300
serve_memory_limit = "512MiB"
spare_serving_process = false

[cache]
dir      = "/tmp/x/cache"
max_size = "512MiB"
min_free = "1073741824"

[registry]
insecure = ["registry.local:5000"]
max_fetches = 3
fetch_timeout = "5s"

[index]
build_missing = false
max_size = "100MiB"

[prefetch]
record_seconds = "1m"
replay = false
`)
	cfg, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Daemon: DaemonConfig{
			Socket: "/tmp/x/clipd.sock", StateDir: "/tmp/x/state",
			MountRoots: []string{"/tmp/x/mnt", "/mnt/images"}, LogLevel: "debug",
			AllowedUIDs: []uint32{1000, 1001}, AllowedGIDs: []uint32{50}, SocketGroup: "clipd",
			ServeOOMScoreAdj: 300, ServeMemoryLimit: 512 * MiB, SpareServingProcess: false,
		},
		Cache:    CacheConfig{Dir: "/tmp/x/cache", MaxSize: 512 * MiB, MinFree: GiB},
		Registry: RegistryConfig{Insecure: []string{"registry.local:5000"}, MaxFetches: 3, FetchTimeout: Duration(5 * time.Second)},
		Index:    IndexConfig{BuildMissing: false, MaxSize: 100 * MiB},
		Prefetch: PrefetchConfig{RecordSeconds: Duration(time.Minute), Replay: false},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got  %+v\nwant %+v", cfg, want)
	}
}

func TestLoadPartialConfigKeepsDefaults(t *testing.T) {
	cfg, err := LoadConfig(writeConfig(t, "[cache]\nmax_size = \"1TiB\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Cache.MaxSize != TiB || cfg.Cache.MinFree != 2*GiB || cfg.Daemon.Socket != "/run/clipd/clipd.sock" {
		t.Errorf("got %+v", cfg)
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name, text string
		want       []string
	}{
		{"unknown key", "[daemon]\nsockets = \"/x\"\n", []string{"unknown key", "daemon.sockets"}},
		{"unknown table", "[cachee]\ndir = \"/x\"\n", []string{"unknown key", "cachee"}},
		{"bad size", "[cache]\nmax_size = \"20XB\"\n", []string{"max_size", "20XB"}},
		{"negative size", "[cache]\nmin_free = \"-1GiB\"\n", []string{"min_free", "-1GiB"}},
		{"bad log level", "[daemon]\nlog_level = \"verbose\"\n", []string{"log_level", "verbose"}},
		{"bad max_fetches", "[registry]\nmax_fetches = 0\n", []string{"registry.max_fetches", "0"}},
		{"bad fetch_timeout", "[registry]\nfetch_timeout = \"100ms\"\n", []string{"registry.fetch_timeout", "100ms"}},
		{"fetch_timeout not a duration", "[registry]\nfetch_timeout = \"soon\"\n", []string{"fetch_timeout", "soon"}},
		{"relative root", "[daemon]\nmount_roots = [\"mnt\"]\n", []string{"mount_roots", "mnt"}},
		{"unclean dir", "[cache]\ndir = \"/var/../cache\"\n", []string{"cache.dir", "/var/../cache"}},
		{"no roots", "[daemon]\nmount_roots = []\n", []string{"mount_roots"}},
		{"wrong type", "[daemon]\nallowed_uids = \"root\"\n", []string{"allowed_uids"}},
		{"syntax", "[daemon\n", []string{"config"}},
		{"oom score too low", "[daemon]\nserve_oom_score_adj = -1001\n", []string{"daemon.serve_oom_score_adj", "-1001"}},
		{"oom score too high", "[daemon]\nserve_oom_score_adj = 1001\n", []string{"daemon.serve_oom_score_adj", "1001"}},
		{"negative record_seconds", "[prefetch]\nrecord_seconds = \"-1s\"\n", []string{"prefetch.record_seconds", "-1s"}},
		{"record_seconds too long", "[prefetch]\nrecord_seconds = \"2h\"\n", []string{"prefetch.record_seconds", "2h"}},
		{"memory limit too small", "[daemon]\nserve_memory_limit = \"64MiB\"\n", []string{"daemon.serve_memory_limit", "64MiB", "256MiB"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := LoadConfig(writeConfig(t, c.text))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
	if _, err := LoadConfig("/nonexistent/clipd.toml"); err == nil || !strings.Contains(err.Error(), "/nonexistent/clipd.toml") {
		t.Errorf("missing file: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]Size{"0": 0, "4096": 4096, "10B": 10, "4KiB": 4 * KiB, "4MiB": 4 * MiB, "20GiB": 20 * GiB, "3TiB": 3 * TiB, " 2 GiB ": 2 * GiB}
	for s, want := range good {
		got, err := ParseSize(s)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "GiB", "1.5GiB", "-1", "4GB", "4k", "99999999999TiB"} {
		if _, err := ParseSize(s); err == nil {
			t.Errorf("ParseSize(%q) accepted", s)
		}
	}
	if s := (20 * GiB).String(); s != "20GiB" {
		t.Errorf("String = %q", s)
	}
}

// The documented example must load and say exactly the defaults.
func TestConfigExampleIsTheDefaults(t *testing.T) {
	cfg, err := LoadConfig("../config.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	if want := DefaultConfig(); !reflect.DeepEqual(cfg, want) {
		t.Errorf("config.toml.example differs from DefaultConfig:\n got %+v\nwant %+v", cfg, want)
	}
}
