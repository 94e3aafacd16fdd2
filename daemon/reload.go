package daemon

import (
	"fmt"
	"slices"
)

// Reloader is a Mounter that can take a new configuration without a
// restart (systemctl reload). It returns the keys it applied and the keys
// that changed but need a restart.
type Reloader interface {
	Reload(cfg Config) (applied, restart []string)
}

// Reload applies cfg where it can change live: the log level, the peers
// allowed on the API, the mount roots (for new mounts), and whatever the
// Mounter applies (fetch limits, cache budget). Keys that need a restart
// keep their old values and are returned in restart. An invalid cfg changes
// nothing.
func (s *Server) Reload(cfg Config) (applied, restart []string, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, nil, fmt.Errorf("reload: %w", err)
	}
	s.cfgMu.Lock()
	old := s.cfg
	next := cfg
	// These belong to resources made at start.
	keep := []struct {
		key     string
		changed bool
		restore func()
	}{
		{"daemon.socket", cfg.Daemon.Socket != old.Daemon.Socket, func() { next.Daemon.Socket = old.Daemon.Socket }},
		{"daemon.state_dir", cfg.Daemon.StateDir != old.Daemon.StateDir, func() { next.Daemon.StateDir = old.Daemon.StateDir }},
		{"daemon.socket_group", cfg.Daemon.SocketGroup != old.Daemon.SocketGroup, func() { next.Daemon.SocketGroup = old.Daemon.SocketGroup }},
		{"cache.dir", cfg.Cache.Dir != old.Cache.Dir, func() { next.Cache.Dir = old.Cache.Dir }},
	}
	for _, k := range keep {
		if k.changed {
			restart = append(restart, k.key)
			k.restore()
		}
	}
	s.cfg = next
	s.cfgMu.Unlock()

	if cfg.Daemon.LogLevel != old.Daemon.LogLevel {
		if s.level != nil {
			lv, _ := ParseLogLevel(cfg.Daemon.LogLevel) // validated
			s.level.Set(lv)
			applied = append(applied, "daemon.log_level")
		} else {
			restart = append(restart, "daemon.log_level")
		}
	}
	if !slices.Equal(cfg.Daemon.AllowedUIDs, old.Daemon.AllowedUIDs) {
		applied = append(applied, "daemon.allowed_uids")
	}
	if !slices.Equal(cfg.Daemon.AllowedGIDs, old.Daemon.AllowedGIDs) {
		applied = append(applied, "daemon.allowed_gids")
	}
	if !slices.Equal(cfg.Daemon.MountRoots, old.Daemon.MountRoots) {
		applied = append(applied, "daemon.mount_roots")
	}
	// Every reload, changed or not: an operator may have opened a root
	// since (a reload is how the warning is seen again).
	if err := prepareRoots(cfg.Daemon.MountRoots, s.log); err != nil {
		s.log.Warn("reload: mount roots", "err", err)
	}
	if r, ok := s.mounter.(Reloader); ok {
		a, rs := r.Reload(next)
		applied, restart = append(applied, a...), append(restart, rs...)
	} else {
		// An in-process mounter takes its settings once.
		restart = append(restart, mounterKeys(old, cfg)...)
	}
	s.log.Info("configuration reloaded", "applied", applied)
	if len(restart) > 0 {
		s.log.Warn("configuration changes need a restart", "keys", restart)
	}
	return applied, restart, nil
}

// mounterKeys lists the changed keys that only the Mounter uses.
func mounterKeys(old, cfg Config) []string {
	var out []string
	if !slices.Equal(cfg.Registry.Insecure, old.Registry.Insecure) {
		out = append(out, "registry.insecure")
	}
	if cfg.Registry.MaxFetches != old.Registry.MaxFetches {
		out = append(out, "registry.max_fetches")
	}
	if cfg.Cache.MaxSize != old.Cache.MaxSize {
		out = append(out, "cache.max_size")
	}
	if cfg.Cache.MinFree != old.Cache.MinFree {
		out = append(out, "cache.min_free")
	}
	return out
}
