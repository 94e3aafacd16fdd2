package main

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/clipd/clipd/cache"
	"github.com/clipd/clipd/daemon"
)

// cacheHelp says what the cache commands read: the directory, never the
// daemon (so --socket plays no part).
const cacheHelp = `usage: clipd cache ls [--json] [--dir DIR]
       clipd cache prune [--all] [--dir DIR]

The cache commands work on the cache directory itself, not through the
daemon: --socket is not used. They read the config of --config (default
` + daemon.DefaultConfigPath + ` when it exists): cache.dir is the directory
unless --dir is given; prune also uses cache.max_size and cache.min_free.

  ls      lists the entries by layer and the budget the cache records (the
          one the daemon set); it changes nothing.
  prune   records the config's budget and evicts down to it (--all: every
          entry).

Neither creates the directory: a missing one is an error.
`

// cmdCache works on the cache directory itself, not through the daemon: the
// store is safe to share between processes (its budget, evictions and locks
// live on disk), so an operator can list and prune it with the daemon up or
// down.
func cmdCache(e *env, args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") && args[0] != "--help" && args[0] != "-h" {
		return usageErrorf("cache: want a subcommand: ls or prune (see 'clipd cache --help')")
	}
	switch args[0] {
	case "ls":
		return cmdCacheLs(e, args[1:])
	case "prune":
		return cmdCachePrune(e, args[1:])
	case "--help", "-h", "help":
		fmt.Fprint(e.stdout, cacheHelp)
		return nil
	}
	return usageErrorf("cache: unknown subcommand %q (want ls or prune)", args[0])
}

// cacheDir returns --dir, or cache.dir of the config.
func cacheDir(e *env, dir string) (string, daemon.Config, error) {
	cfg, err := e.global.loadConfig()
	if err != nil {
		return "", cfg, err
	}
	if dir == "" {
		dir = cfg.Cache.Dir
	}
	return dir, cfg, nil
}

// openCache opens the existing cache of --dir, or of cache.dir in the
// config, with the config's budget, which it records for every process. It
// also returns the usage recorded before opening (opening enforces the
// budget already).
func openCache(e *env, dir string) (*cache.Store, cache.Stats, error) {
	var before cache.Stats
	dir, cfg, err := cacheDir(e, dir)
	if err != nil {
		return nil, before, err
	}
	before.Used, before.Evictions, _ = cache.ReadUsage(dir)
	log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := cache.OpenWith(dir, cache.Options{MaxSize: int64(cfg.Cache.MaxSize), MinFree: int64(cfg.Cache.MinFree), MustExist: true, Logger: log})
	return s, before, err
}

// layerUsage is one line of `clipd cache ls`.
type layerUsage struct {
	Layer   string `json:"layer"`
	Entries int    `json:"entries"`
	Bytes   int64  `json:"bytes"`
}

type cacheListing struct {
	Dir       string       `json:"dir"`
	Layers    []layerUsage `json:"layers"`
	Entries   int          `json:"entries"`
	Bytes     int64        `json:"bytes"`
	MaxSize   int64        `json:"max_size"`
	MinFree   int64        `json:"min_free"`
	Limit     int64        `json:"limit"` // what the cache may hold now
	Evictions int64        `json:"evictions"`
}

func cmdCacheLs(e *env, args []string) error {
	flags := newFlags(e, "cache ls", "cache ls [--json] [--dir DIR]")
	asJSON := flags.Bool("json", false, "print JSON")
	dir := flags.String("dir", "", "cache directory (default: cache.dir of the config); never created")
	if _, err := parse(flags, args, 0, 0); err != nil {
		return err
	}
	d, _, err := cacheDir(e, *dir)
	if err != nil {
		return err
	}
	// Read-only: listing with another config must not change the budget
	// of the live cache, nor evict.
	s, err := cache.Inspect(d)
	if err != nil {
		return err
	}
	list, err := s.List()
	if err != nil {
		return err
	}
	by := map[string]*layerUsage{}
	out := cacheListing{Dir: s.Dir(), Layers: []layerUsage{}}
	for _, en := range list {
		layer, _, _ := strings.Cut(en.Key, "/")
		u := by[layer]
		if u == nil {
			u = &layerUsage{Layer: layer}
			by[layer] = u
		}
		u.Entries++
		u.Bytes += en.Size
		out.Entries++
		out.Bytes += en.Size
	}
	for _, u := range by {
		out.Layers = append(out.Layers, *u)
	}
	slices.SortFunc(out.Layers, func(a, b layerUsage) int { return strings.Compare(a.Layer, b.Layer) })
	st, err := s.Stats()
	if err != nil {
		return err
	}
	out.MaxSize, out.MinFree, out.Limit, out.Evictions = st.MaxSize, st.MinFree, st.Limit, st.Evictions
	if *asJSON {
		return printJSON(e, out)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LAYER\tENTRIES\tSIZE")
	for _, u := range out.Layers {
		fmt.Fprintf(tw, "%s\t%d\t%s\n", u.Layer, u.Entries, daemon.Size(u.Bytes))
	}
	tw.Flush()
	fmt.Fprintf(e.stdout, "total: %d entries, %s in %s; budget %s, keep %s free (limit now %s); %d evictions\n",
		out.Entries, daemon.Size(out.Bytes), out.Dir, sizeOrNone(out.MaxSize), daemon.Size(out.MinFree), daemon.Size(out.Limit), out.Evictions)
	return nil
}

func sizeOrNone(n int64) string {
	if n <= 0 {
		return "none"
	}
	return daemon.Size(n).String()
}

func cmdCachePrune(e *env, args []string) error {
	flags := newFlags(e, "cache prune", "cache prune [--all] [--dir DIR]")
	all := flags.Bool("all", false, "evict every entry, not just down to the budget")
	dir := flags.String("dir", "", "cache directory (default: cache.dir of the config); never created")
	if _, err := parse(flags, args, 0, 0); err != nil {
		return err
	}
	s, before, err := openCache(e, *dir)
	if err != nil {
		return err
	}
	defer s.Close()
	if _, _, err := s.Prune(*all); err != nil {
		return err
	}
	after := s.Stats()
	fmt.Fprintf(e.stdout, "evicted %d entries; %s left of %s\n", after.Evictions-before.Evictions, daemon.Size(after.Used), daemon.Size(before.Used))
	return nil
}
