package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/mounter"
	"github.com/clipd/clipd/systemd"
)

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// cmdServeMount is the hidden serving process the daemon starts for each
// mount: it serves one FUSE filesystem and answers on its control socket.
// It runs in its own session, so it outlives the daemon.
func cmdServeMount(e *env, args []string) error {
	fs := flag.NewFlagSet("clipd serve-mount", flag.ContinueOnError)
	// Errors are returned and printed once by run.
	fs.SetOutput(io.Discard)
	var o mounter.ServeOptions
	var insecure stringList
	fs.StringVar(&o.ID, "id", "", "mount id")
	fs.StringVar(&o.Archive, "archive", "", ".clip archive")
	fs.StringVar(&o.Mountpoint, "mountpoint", "", "mountpoint (checked by the daemon)")
	fs.StringVar(&o.Control, "control", "", "control socket to listen on")
	fs.StringVar(&o.Mounter.CacheDir, "cache", "", "cache directory")
	fs.IntVar(&o.Mounter.Fetcher.MaxFetches, "max-fetches", 0, "registry requests in flight")
	fs.DurationVar(&o.Mounter.Fetcher.FetchTimeout, "fetch-timeout", 0, "time a fetch may go without a byte before the read fails")
	hostsDir := fs.String("registry-config-path", "", "directory of hosts.toml files (registry mirrors)")
	fs.Var(&insecure, "insecure", "registry spoken to over plain HTTP (repeatable)")
	fs.BoolVar(&o.Prefetch, "prefetch", false, "fetch the image in the background")
	fs.StringVar(&o.Mounter.Profiles.Dir, "profiles", "", "prefetch profile store (empty: no profiles)")
	fs.DurationVar(&o.Mounter.Profiles.RecordFor, "record-for", 0, "record the spans read first for this long after the mount (0: off)")
	fs.BoolVar(&o.Mounter.Profiles.Replay, "replay", false, "prefetch the spans of the image's profile")
	fs.BoolVar(&o.Setuid, "setuid", false, "honour setuid/setgid bits (default: nosuid)")
	logLevel := fs.String("log-level", "info", "log level")
	reportFD := fs.Int("report-fd", -1, "descriptor to report the mount live (or its error) on")
	archiveFD := fs.Int("archive-fd", -1, "descriptor of the archive, opened by the daemon with the requesting peer's rights")
	authFD := fs.Int("auth-fd", -1, "descriptor to read the mount's registry credentials from (a pipe)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(e.stdout)
			fs.PrintDefaults()
			return errHelp
		}
		return usageErrorf("serve-mount: %v", err)
	}
	if o.ID == "" || o.Archive == "" || o.Mountpoint == "" || o.Control == "" || o.Mounter.CacheDir == "" || fs.NArg() != 0 {
		return usageErrorf("serve-mount: --id, --archive, --mountpoint, --control and --cache are required (this command is started by clipd serve)")
	}
	level, err := api.ParseLogLevel(*logLevel)
	if err != nil {
		return fmt.Errorf("serve-mount: --log-level: %w", err)
	}
	// Neither the daemon's terminal going away nor a broken log stream may
	// take the filesystem down.
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	o.Level = new(slog.LevelVar)
	o.Level.Set(level)
	o.Mounter.Fetcher.Insecure = insecure
	if o.Mounter.Fetcher.Hosts, err = fetcher.LoadHostsDir(*hostsDir); err != nil {
		return fmt.Errorf("serve-mount: %w", err)
	}
	o.Mounter.Logger = slog.New(systemd.LogHandler(e.stderr, o.Level, e.stderr == os.Stderr && systemd.UnderJournal())).
		With("mount", o.ID, "serving_pid", os.Getpid())
	o.Version = clipdVersion()
	if *reportFD >= 0 {
		o.Report = os.NewFile(uintptr(*reportFD), "report")
	}
	if *archiveFD >= 0 {
		o.ArchiveFile = os.NewFile(uintptr(*archiveFD), o.Archive)
	}
	if *authFD >= 0 {
		c, err := mounter.ReadCredentials(*authFD)
		if err != nil {
			return fmt.Errorf("serve-mount: %w", err)
		}
		o.Mounter.Fetcher.Keychain = c.Keychain()
	}
	return mounter.ServeMount(e.ctx, o)
}
