package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/fetcher"
)

// DefaultConfigPath is read by the CLI when it is given no --config and the
// file exists.
const DefaultConfigPath = "/etc/clipd/config.toml"

// Config is the daemon's configuration file (TOML). The keys and defaults are
// part of the contract in DESIGN.md.
type Config struct {
	Daemon   DaemonConfig   `toml:"daemon"`
	Cache    CacheConfig    `toml:"cache"`
	Registry RegistryConfig `toml:"registry"`
	Index    IndexConfig    `toml:"index"`
	Prefetch PrefetchConfig `toml:"prefetch"`
}

// DaemonConfig is the [daemon] table.
type DaemonConfig struct {
	Socket     string   `toml:"socket"`
	StateDir   string   `toml:"state_dir"`
	MountRoots []string `toml:"mount_roots"`
	LogLevel   string   `toml:"log_level"`
	// AllowedUIDs and AllowedGIDs name the peers allowed to use the API
	// besides root (matched against the peer's uid and primary gid).
	AllowedUIDs []uint32 `toml:"allowed_uids"`
	AllowedGIDs []uint32 `toml:"allowed_gids"`
	// SocketGroup, when set, owns the socket so that its members can connect
	// (the socket is mode 0660).
	SocketGroup string `toml:"socket_group"`
	// ServeOOMScoreAdj is written to each serving process's
	// /proc/PID/oom_score_adj when it starts: they must not keep the
	// daemon's protection from the OOM killer (OOMScoreAdjust in the unit).
	ServeOOMScoreAdj int `toml:"serve_oom_score_adj"`
	// ServeMemoryLimit bounds each serving process: RLIMIT_DATA (a hard
	// limit: allocations beyond it fail and the process dies, failing one
	// mount) and a Go soft limit of 3/4 of it (GOMEMLIMIT: the runtime
	// collects harder before that). 0 means no limit.
	ServeMemoryLimit Size `toml:"serve_memory_limit"`
	// UpperDir holds the upper and work directories of writable mounts;
	// empty means StateDir/upper. It must be on a file system overlayfs
	// accepts as an upper layer (not FUSE, not overlay).
	UpperDir string `toml:"upper_dir"`
	// SpareServingProcess keeps one serving process started in advance,
	// waiting for the next mount request: the request then skips the
	// fork/exec and Go start-up of its serving process.
	SpareServingProcess bool `toml:"spare_serving_process"`
}

// UpperDirOrDefault is where writable mounts keep their upper directories.
func (d DaemonConfig) UpperDirOrDefault() string {
	if d.UpperDir == "" {
		return filepath.Join(d.StateDir, "upper")
	}
	return d.UpperDir
}

// MinServeMemoryLimit is the smallest daemon.serve_memory_limit: the Go
// runtime alone commits about 100 MiB of data mappings before main runs
// (measured: a clipd binary fails to start under RLIMIT_DATA of 96 MiB).
const MinServeMemoryLimit = 256 * MiB

// CacheConfig is the [cache] table.
type CacheConfig struct {
	Dir     string `toml:"dir"`
	MaxSize Size   `toml:"max_size"`
	MinFree Size   `toml:"min_free"`
}

// RegistryConfig is the [registry] table.
type RegistryConfig struct {
	// Insecure lists host[:port] spoken to over plain HTTP besides localhost.
	Insecure []string `toml:"insecure"`
	// MaxFetches bounds the registry requests in flight at once.
	MaxFetches int `toml:"max_fetches"`
	// FetchTimeout is how long a span fetch may go without receiving a
	// byte, retries included, before the read fails with EIO: the time from
	// a stalled registry to EIO.
	FetchTimeout Duration `toml:"fetch_timeout"`
	// ConfigPath is a directory of containerd hosts.toml files
	// (<config_path>/<registry host>/hosts.toml, _default for the others):
	// mirrors and pull-through caches tried before the registry, with
	// failover. Empty: every registry is read directly.
	ConfigPath string `toml:"config_path"`
}

// IndexConfig is the [index] table: the store of indexes for mounts by
// image reference (daemon/image.go).
type IndexConfig struct {
	// BuildMissing builds an index by streaming the image's layers when
	// neither the store nor the registry has one (a full download).
	BuildMissing bool `toml:"build_missing"`
	// MaxSize is the budget of the index store; unused indexes beyond it
	// are removed, least recently used first. 0 means no budget.
	MaxSize Size `toml:"max_size"`
}

// PrefetchConfig is the [prefetch] table: prefetch profiles (package
// profile), recorded by serving processes and replayed on later mounts.
type PrefetchConfig struct {
	// RecordSeconds is how long after a mount its serving process records
	// the spans first read, merged into the image's profile in
	// daemon.state_dir/profiles at the end of the window or at the unmount.
	// 0 records nothing.
	RecordSeconds Duration `toml:"record_seconds"`
	// Replay fetches the spans of the image's profile, when there is one
	// that fits the mounted index, in parallel from the first read of one
	// of them (fetcher.Replayer).
	Replay bool `toml:"replay"`
}

// MaxRecordWindow bounds prefetch.record_seconds: a profile is about a
// start, and a recording holds its touches in memory until it ends.
const MaxRecordWindow = time.Hour

// DefaultConfig returns the configuration used when no file is given.
func DefaultConfig() Config {
	return Config{
		Daemon: DaemonConfig{
			Socket:      "/run/clipd/clipd.sock",
			StateDir:    "/var/lib/clipd",
			MountRoots:  []string{"/run/clipd/mnt"},
			LogLevel:    "info",
			AllowedUIDs: []uint32{},
			AllowedGIDs: []uint32{},
			// The kernel's default: serving processes are killed like any
			// other process of their size, not after every workload.
			ServeOOMScoreAdj:    0,
			ServeMemoryLimit:    1 * GiB,
			SpareServingProcess: true,
		},
		Cache: CacheConfig{
			Dir:     "/var/cache/clipd",
			MaxSize: 20 * GiB,
			MinFree: 2 * GiB,
		},
		Registry: RegistryConfig{Insecure: []string{}, MaxFetches: 8, FetchTimeout: Duration(30 * time.Second)},
		Index:    IndexConfig{BuildMissing: true, MaxSize: 2 * GiB},
		Prefetch: PrefetchConfig{RecordSeconds: Duration(30 * time.Second), Replay: true},
	}
}

// LoadConfig reads path over the defaults; an empty path gives the defaults.
// An unknown key or a bad value is an error naming it.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	if path == "" {
		return cfg, nil
	}
	md, err := toml.DecodeFile(path, &cfg)
	if err != nil {
		var perr toml.ParseError
		if errors.As(err, &perr) {
			// One line naming the key reads better in a journal than
			// ErrorWithPosition's source excerpt.
			msg := perr.Message
			if perr.LastKey != "" {
				msg = perr.LastKey + ": " + msg
			}
			return Config{}, fmt.Errorf("config %s: line %d: %s", path, perr.Position.Line, msg)
		}
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return Config{}, fmt.Errorf("config %s: unknown key %s", path, strings.Join(keys, ", "))
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// LoadConfigDefault loads path, or DefaultConfigPath when path is empty and
// that file exists, or the defaults.
func LoadConfigDefault(path string) (Config, error) {
	if path == "" {
		if _, err := os.Stat(DefaultConfigPath); err == nil {
			path = DefaultConfigPath
		} else if !errors.Is(err, fs.ErrNotExist) {
			return Config{}, fmt.Errorf("config %s: %w", DefaultConfigPath, err)
		}
	}
	return LoadConfig(path)
}

// Validate checks values that TOML types alone cannot.
func (c Config) Validate() error {
	if err := checkAbs("daemon.socket", c.Daemon.Socket); err != nil {
		return err
	}
	if err := checkAbs("daemon.state_dir", c.Daemon.StateDir); err != nil {
		return err
	}
	if len(c.Daemon.MountRoots) == 0 {
		return errors.New("daemon.mount_roots: at least one root is needed")
	}
	for _, r := range c.Daemon.MountRoots {
		if err := checkAbs("daemon.mount_roots", r); err != nil {
			return err
		}
		if r == "/" {
			return errors.New(`daemon.mount_roots: "/" is not allowed as a mount root`)
		}
	}
	if _, err := api.ParseLogLevel(c.Daemon.LogLevel); err != nil {
		return fmt.Errorf("daemon.log_level: %w", err)
	}
	if a := c.Daemon.ServeOOMScoreAdj; a < -1000 || a > 1000 {
		return fmt.Errorf("daemon.serve_oom_score_adj: %d is outside -1000-1000", a)
	}
	if l := c.Daemon.ServeMemoryLimit; l != 0 && l < MinServeMemoryLimit {
		return fmt.Errorf("daemon.serve_memory_limit: %s is below %s, too little for a serving process to start (0 means no limit)", l, MinServeMemoryLimit)
	}
	if c.Daemon.UpperDir != "" {
		if err := checkAbs("daemon.upper_dir", c.Daemon.UpperDir); err != nil {
			return err
		}
	}
	if err := checkAbs("cache.dir", c.Cache.Dir); err != nil {
		return err
	}
	for _, h := range c.Registry.Insecure {
		if h == "" || strings.ContainsAny(h, "/ \t") {
			return fmt.Errorf("registry.insecure: %q is not a host[:port]", h)
		}
	}
	if c.Registry.MaxFetches < 1 || c.Registry.MaxFetches > 1024 {
		return fmt.Errorf("registry.max_fetches: %d is outside 1-1024", c.Registry.MaxFetches)
	}
	if d := time.Duration(c.Registry.FetchTimeout); d < time.Second || d > 10*time.Minute {
		return fmt.Errorf("registry.fetch_timeout: %s is outside 1s-10m", d)
	}
	if c.Registry.ConfigPath != "" {
		if err := checkAbs("registry.config_path", c.Registry.ConfigPath); err != nil {
			return err
		}
		if _, err := fetcher.LoadHostsDir(c.Registry.ConfigPath); err != nil {
			return fmt.Errorf("registry.config_path: %w", err)
		}
	}
	if d := c.Prefetch.RecordSeconds.Std(); d < 0 || d > MaxRecordWindow {
		return fmt.Errorf("prefetch.record_seconds: %s is outside 0-%s (0 turns recording off)", d, MaxRecordWindow)
	}
	return nil
}

func checkAbs(key, p string) error {
	if p == "" {
		return fmt.Errorf("%s: must not be empty", key)
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return fmt.Errorf("%s: %q must be an absolute, clean path", key, p)
	}
	return nil
}
