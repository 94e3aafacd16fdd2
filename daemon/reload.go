package daemon

import (
	"fmt"
	"slices"

	"github.com/clipd/clipd/api"
)

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
			lv, _ := api.ParseLogLevel(cfg.Daemon.LogLevel) // validated
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
	if cfg.Index != old.Index {
		applied = append(applied, "index (new mounts by reference)")
	}
	// Every reload, changed or not: an operator may have opened a root
	// since (a reload is how the warning is seen again).
	if err := prepareRoots(cfg.Daemon.MountRoots, s.log); err != nil {
		s.log.Warn("reload: mount roots", "err", err)
	}
	a, rs := s.mounter.Reload(next)
	applied, restart = append(applied, a...), append(restart, rs...)
	s.log.Info("configuration reloaded", "applied", applied)
	if len(restart) > 0 {
		s.log.Warn("configuration changes need a restart", "keys", restart)
	}
	return applied, restart, nil
}
