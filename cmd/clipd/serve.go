package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/clipd/clipd/daemon"
	"github.com/clipd/clipd/mounter"
)

func cmdServe(e *env, args []string) error {
	flags := newFlags(e, "serve", "serve [--config FILE] [--log-level debug|info|warn|error]")
	logLevel := flags.String("log-level", "", "override daemon.log_level of the config")
	if _, err := parse(flags, args, 0, 0); err != nil {
		return err
	}
	cfg, err := e.global.loadConfig()
	if err != nil {
		return err
	}
	if *logLevel != "" {
		cfg.Daemon.LogLevel = *logLevel
	}
	if e.global.socket != "" {
		cfg.Daemon.Socket = e.global.socket
	}
	level, err := daemon.ParseLogLevel(cfg.Daemon.LogLevel)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
	m, err := mounter.New(mounter.Config{CacheDir: cfg.Cache.Dir, Insecure: cfg.Registry.Insecure, MaxFetches: cfg.Registry.MaxFetches, Logger: log})
	if err != nil {
		return err
	}
	srv, err := daemon.NewServer(daemon.Options{Config: cfg, Mounter: m, Logger: log, Version: clipdVersion()})
	if err != nil {
		return err
	}
	log.Info("starting clipd", "version", clipdVersion(), "pid", os.Getpid(), "config", configName(e.global.config))
	log.Debug("effective config", "socket", cfg.Daemon.Socket, "state_dir", cfg.Daemon.StateDir,
		"mount_roots", cfg.Daemon.MountRoots, "allowed_uids", cfg.Daemon.AllowedUIDs, "allowed_gids", cfg.Daemon.AllowedGIDs,
		"socket_group", cfg.Daemon.SocketGroup, "cache_dir", cfg.Cache.Dir, "max_size", cfg.Cache.MaxSize,
		"min_free", cfg.Cache.MinFree, "insecure", cfg.Registry.Insecure)
	return srv.Serve(e.ctx)
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
