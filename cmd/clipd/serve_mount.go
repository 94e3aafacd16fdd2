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
	"time"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/internal/peeropen"
	"github.com/clipd/clipd/mounter"
	"github.com/clipd/clipd/systemd"
	"golang.org/x/sys/unix"
)

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// serveMountFlags are serve-mount's options as parsed; a spare gets the
// request-specific ones later (serveSpare).
type serveMountFlags struct {
	o                                    mounter.ServeOptions
	insecure                             stringList
	hostsDir, logLevel                   string
	reportFD, archiveFD, authFD, spareFD int
	// handler is the log handler, once prepare made it.
	handler slog.Handler
}

// cmdServeMount is the hidden serving process the daemon starts for each
// mount: it serves one FUSE filesystem and answers on its control socket.
// It runs in its own session, so it outlives the daemon. With --spare-fd
// it is a spare, started before the request and waiting for it.
func cmdServeMount(e *env, args []string) error {
	fs := flag.NewFlagSet("clipd serve-mount", flag.ContinueOnError)
	// Errors are returned and printed once by run.
	fs.SetOutput(io.Discard)
	var f serveMountFlags
	o := &f.o
	fs.StringVar(&o.ID, "id", "", "mount id")
	fs.StringVar(&o.Archive, "archive", "", ".clip archive")
	fs.StringVar(&o.Mountpoint, "mountpoint", "", "mountpoint (checked by the daemon)")
	fs.StringVar(&o.Control, "control", "", "control socket to listen on")
	fs.StringVar(&o.Mounter.CacheDir, "cache", "", "cache directory")
	fs.IntVar(&o.Mounter.Fetcher.MaxFetches, "max-fetches", 0, "registry requests in flight")
	fs.DurationVar(&o.Mounter.Fetcher.FetchTimeout, "fetch-timeout", 0, "time a fetch may go without a byte before the read fails")
	fs.StringVar(&f.hostsDir, "registry-config-path", "", "directory of hosts.toml files (registry mirrors)")
	fs.Var(&f.insecure, "insecure", "registry spoken to over plain HTTP (repeatable)")
	fs.BoolVar(&o.Prefetch, "prefetch", false, "fetch the image in the background")
	fs.StringVar(&o.Mounter.Profiles.Dir, "profiles", "", "prefetch profile store (empty: no profiles)")
	fs.DurationVar(&o.Mounter.Profiles.RecordFor, "record-for", 0, "record the spans read first for this long after the mount (0: off)")
	fs.BoolVar(&o.Mounter.Profiles.Replay, "replay", false, "prefetch the spans of the image's profile")
	fs.BoolVar(&o.Setuid, "setuid", false, "honour setuid/setgid bits (default: nosuid)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level")
	fs.IntVar(&f.reportFD, "report-fd", -1, "descriptor to report the mount live (or its error) on")
	fs.IntVar(&f.archiveFD, "archive-fd", -1, "descriptor of the archive, opened by the daemon with the requesting peer's rights")
	fs.IntVar(&f.authFD, "auth-fd", -1, "descriptor to read the mount's registry credentials from (a pipe)")
	fs.IntVar(&f.spareFD, "spare-fd", -1, "spare: socket to receive the mount request on (the rest of the flags are the daemon's settings)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(e.stdout)
			fs.PrintDefaults()
			return errHelp
		}
		return usageErrorf("serve-mount: %v", err)
	}
	if fs.NArg() != 0 {
		return usageErrorf("serve-mount: unexpected arguments %q", fs.Args())
	}
	if f.spareFD >= 0 {
		return serveSpare(e, &f)
	}
	o.EnvInputs = true
	return f.serve(e)
}

// serveSpare waits for the daemon's request on --spare-fd and then serves
// it like a process exec'd with it. Without a valid request (the daemon's
// end closed, or anything else arrived) it returns without mounting.
func serveSpare(e *env, f *serveMountFlags) error {
	o := &f.o
	if o.ID != "" || o.Archive != "" || o.Mountpoint != "" || o.Control != "" || o.Prefetch || o.Setuid ||
		f.reportFD >= 0 || f.archiveFD >= 0 || f.authFD >= 0 {
		return usageErrorf("serve-mount: --spare-fd takes the request on the socket, not in flags")
	}
	if o.Mounter.CacheDir == "" {
		return usageErrorf("serve-mount: --cache is required")
	}
	// Neither is ever taken from the environment by a spare: its request
	// says which directory and whose rights.
	os.Unsetenv(mounter.MountpointFDEnv)
	os.Unsetenv(mounter.PeerEnv)
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	unix.CloseOnExec(f.spareFD)
	// What does not depend on the request is started before telling the
	// daemon this spare is ready: the request then pays only for the rest.
	if err := f.prepare(e); err != nil {
		return err
	}
	o.Warm = mounter.WarmSpare(o.Mounter, mounter.SpareHeap, slog.New(f.handler).With("serving_pid", os.Getpid()))
	if _, err := unix.Write(f.spareFD, []byte(mounter.SpareReady)); err != nil {
		return fmt.Errorf("serve-mount: spare: tell the daemon: %w", err)
	}
	r, fds, err := mounter.ReceiveSpareRequest(f.spareFD)
	o.Received = time.Now()
	unix.Close(f.spareFD)
	if errors.Is(err, mounter.ErrSpareReleased) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("serve-mount: spare: %w", err)
	}
	o.ID, o.Archive, o.Mountpoint, o.Control = r.ID, r.Archive, r.Mountpoint, r.Control
	o.Prefetch, o.Setuid = r.Prefetch, r.Setuid
	// Seen by ps (and by whoever looks for a mount's serving process) as
	// a serving process started for this mount.
	title := []string{os.Args[0], "serve-mount", "--id", r.ID, "--archive", r.Archive, "--mountpoint", r.Mountpoint, "--control", r.Control}
	for i := 2; i < len(os.Args); i++ {
		if os.Args[i] == "--spare-fd" {
			i++
			continue
		}
		title = append(title, os.Args[i])
	}
	if err := setProcTitle(title); err != nil {
		fmt.Fprintf(e.stderr, "clipd serve-mount: spare %s: command line kept: %v\n", r.ID, err)
	}
	f.reportFD, f.archiveFD, f.authFD = fds.Report, fds.Archive, fds.Auth
	o.Spare = true
	if fds.Dir >= 0 {
		if o.Dir, err = mounter.DirFromFD(fds.Dir); err != nil {
			unix.Close(fds.Dir)
			err = fmt.Errorf("serve-mount: spare: mountpoint: %w", err)
		}
	}
	if err == nil && r.Peer != "" {
		if o.As, err = peeropen.Parse(r.Peer); err != nil {
			err = fmt.Errorf("serve-mount: spare: peer: %w", err)
		}
	}
	if err != nil {
		// The daemon reads the report pipe's end as a process that
		// exited before mounting, as with bad flags.
		unix.Close(fds.Report)
		return err
	}
	return f.serve(e)
}

// prepare takes the settings of f that do not depend on the request (a
// spare does this before its request comes); once.
func (f *serveMountFlags) prepare(e *env) error {
	if f.handler != nil {
		return nil
	}
	o := &f.o
	level, err := api.ParseLogLevel(f.logLevel)
	if err != nil {
		return fmt.Errorf("serve-mount: --log-level: %w", err)
	}
	o.Level = new(slog.LevelVar)
	o.Level.Set(level)
	o.Mounter.Fetcher.Insecure = f.insecure
	if o.Mounter.Fetcher.Hosts, err = fetcher.LoadHostsDir(f.hostsDir); err != nil {
		return fmt.Errorf("serve-mount: %w", err)
	}
	o.Version = clipdVersion()
	f.handler = systemd.LogHandler(e.stderr, o.Level, e.stderr == os.Stderr && systemd.UnderJournal())
	return nil
}

// serve runs the serving process with the options of f, however they
// came (flags and environment, or a spare's request).
func (f *serveMountFlags) serve(e *env) error {
	o := &f.o
	if o.ID == "" || o.Archive == "" || o.Mountpoint == "" || o.Control == "" || o.Mounter.CacheDir == "" {
		return usageErrorf("serve-mount: --id, --archive, --mountpoint, --control and --cache are required (this command is started by clipd serve)")
	}
	// Neither the daemon's terminal going away nor a broken log stream may
	// take the filesystem down.
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	if err := f.prepare(e); err != nil {
		return err
	}
	o.Mounter.Logger = slog.New(f.handler).With("mount", o.ID, "serving_pid", os.Getpid())
	if f.reportFD >= 0 {
		o.Report = os.NewFile(uintptr(f.reportFD), "report")
	}
	if f.archiveFD >= 0 {
		o.ArchiveFile = os.NewFile(uintptr(f.archiveFD), o.Archive)
	}
	if f.authFD >= 0 {
		c, err := mounter.ReadCredentials(f.authFD)
		if err != nil {
			return fmt.Errorf("serve-mount: %w", err)
		}
		o.Mounter.Fetcher.Keychain = c.Keychain()
	}
	return mounter.ServeMount(e.ctx, *o)
}
