package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/daemon"
	"github.com/clipd/clipd/mounter"
	"github.com/clipd/clipd/profile"
	"github.com/clipd/clipd/systemd"
)

func cmdServe(e *env, args []string) error {
	flags := newFlags(e, "serve", "serve [--config FILE] [--log-level debug|info|warn|error] [--keep-mounts]")
	logLevel := flags.String("log-level", "", "override daemon.log_level of the config (also across reloads)")
	keepMounts := flags.Bool("keep-mounts", false, "on SIGTERM/SIGINT leave the mounts running for the next daemon to adopt\n(clipd.service sets it); without it every mount is unmounted")
	if _, err := parse(flags, args, 0, 0); err != nil {
		return err
	}
	load := func() (daemon.Config, error) {
		cfg, err := e.global.loadConfig()
		if err != nil {
			return cfg, err
		}
		if *logLevel != "" {
			cfg.Daemon.LogLevel = *logLevel
		}
		if e.global.socket != "" {
			cfg.Daemon.Socket = e.global.socket
		}
		return cfg, nil
	}
	cfg, err := load()
	if err != nil {
		return err
	}
	level, err := api.ParseLogLevel(cfg.Daemon.LogLevel)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	// A broken stderr (journald restarted) must not kill the daemon.
	signal.Ignore(syscall.SIGPIPE)
	var lv slog.LevelVar
	lv.Set(level)
	log := slog.New(systemd.LogHandler(e.stderr, &lv, e.stderr == os.Stderr && systemd.UnderJournal()))

	ln, err := systemd.Listener()
	if err != nil {
		return err
	}
	// Resolved once: after an upgrade replaces the file, new mounts run the
	// new binary, while running mounts keep theirs.
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	sp, err := mounter.NewSpawner(mounter.SpawnConfig{
		Executable: exe, StateDir: cfg.Daemon.StateDir, CacheDir: cfg.Cache.Dir,
		CacheMaxSize: int64(cfg.Cache.MaxSize), CacheMinFree: int64(cfg.Cache.MinFree),
		Insecure: cfg.Registry.Insecure, MaxFetches: cfg.Registry.MaxFetches, LogLevel: cfg.Daemon.LogLevel,
		FetchTimeout:       cfg.Registry.FetchTimeout.Std(),
		RegistryConfigPath: cfg.Registry.ConfigPath,
		Version:            clipdVersion(), Logger: log, Stderr: stderrFile(e), Env: systemd.Environ(),
		Limits: mounter.LimitsOf(cfg), UpperDir: cfg.Daemon.UpperDir,
		MountRoots: cfg.Daemon.MountRoots,
		Profiles:   filepath.Join(cfg.Daemon.StateDir, profile.Dir),
		RecordFor:  cfg.Prefetch.RecordSeconds.Std(), Replay: cfg.Prefetch.Replay,
		Spare: cfg.Daemon.SpareServingProcess,
	})
	if err != nil {
		return err
	}
	defer sp.Close()
	notifier := systemd.Notifier{Log: log}
	srv, err := daemon.NewServer(daemon.Options{Config: cfg, Mounter: sp, Logger: log, Version: clipdVersion(),
		Listener: ln, Notifier: notifier, LogLevel: &lv, KeepMounts: *keepMounts})
	if err != nil {
		return err
	}
	log.Info("starting clipd", "version", clipdVersion(), "pid", os.Getpid(), "config", configName(e.global.config), "executable", exe)
	log.Debug("effective config", "socket", cfg.Daemon.Socket, "state_dir", cfg.Daemon.StateDir,
		"mount_roots", cfg.Daemon.MountRoots, "allowed_uids", cfg.Daemon.AllowedUIDs, "allowed_gids", cfg.Daemon.AllowedGIDs,
		"socket_group", cfg.Daemon.SocketGroup, "cache_dir", cfg.Cache.Dir, "max_size", cfg.Cache.MaxSize,
		"min_free", cfg.Cache.MinFree, "insecure", cfg.Registry.Insecure)

	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	go reloadOnHUP(ctx, srv, load, notifier, log)
	if iv, err := systemd.WatchdogInterval(); err != nil {
		log.Warn("watchdog disabled", "err", err)
	} else if iv > 0 {
		client := api.NewClient(cfg.Daemon.Socket)
		if ln != nil {
			client = api.NewClient(ln.Addr().String())
		}
		log.Info("pinging the systemd watchdog", "interval", iv)
		go notifier.Watchdog(ctx, iv, func(ctx context.Context) error {
			// Through the socket, as a client would: any answer (even a
			// refusal of our own uid) shows the accept loop is alive.
			resp, err := client.Raw(ctx, http.MethodGet, "/v1/health", nil)
			if err == nil {
				resp.Body.Close()
			}
			return err
		})
	}
	return srv.Serve(ctx)
}

// reloadOnHUP is `systemctl reload clipd`: re-read the config and apply
// what can change live. A bad file changes nothing and is logged.
func reloadOnHUP(ctx context.Context, srv *daemon.Server, load func() (daemon.Config, error), n systemd.Notifier, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		n.Reloading()
		log.Info("reloading configuration (SIGHUP)")
		cfg, err := load()
		if err == nil {
			_, _, err = srv.Reload(cfg)
		}
		if err != nil {
			log.Error("reload failed; configuration unchanged", "err", err)
		}
		n.Ready(srv.StatusLine())
	}
}

// stderrFile is the file serving processes log to: the daemon's stderr
// when it is a file (journal stream, log file), else the process's own
// (the daemon runs inside a test). Never a pipe: a pipe would break when
// the daemon dies.
func stderrFile(e *env) *os.File {
	if f, ok := e.stderr.(*os.File); ok {
		return f
	}
	return os.Stderr
}

func configName(p string) string {
	if p != "" {
		return p
	}
	if _, err := os.Stat(daemon.DefaultConfigPath); err == nil {
		return daemon.DefaultConfigPath
	}
	return "(defaults)"
}
