// Command clipd is the node daemon (clipd serve) and its command line
// client. This package only parses flags and prints for humans; the logic
// lives in daemon, mounter, index and fetcher.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/clipd/clipd/daemon"
)

// version is stamped by the Makefile (-ldflags "-X main.version=...");
// empty in a plain go build, where the toolchain's record is used.
var version string

func clipdVersion() string {
	if version != "" {
		return version
	}
	return daemon.Version()
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: clipd [--socket PATH] [--config FILE] COMMAND [ARGS]

Commands:
  serve   [--config FILE] [--log-level L] [--keep-mounts]
                                                    run the daemon (--keep-mounts: leave mounts
                                                    running on exit for the next daemon)
  index   SOURCE [-o OUT.clip] [--push] [--to REF] [--span-size 1MiB] [--platform linux/amd64]
          SOURCE: HOST/REPO:TAG, HOST/REPO@sha256:..., or oci-layout:DIR[:TAG]
          --push: publish the index in the registry, attached to the image's manifest
          --to REF: copy the image to REF first, then index and publish there
  mount   ARCHIVE|REF MOUNTPOINT [--prefetch] [--setuid] [--writable] [--bundle DIR] [--platform P]
                                                    mount an index, or an image by reference;
                                                    prints the mount id
                                                    (--setuid: honour setuid bits, default nosuid;
                                                    --writable: an overlay over the shared image mount;
                                                    --bundle: write a runc bundle for the image in DIR)
  pull    REF [--platform P]                        stage an image's index in the index store
  images  [--json] | prune                          list the index store, or remove unused indexes
  profile ls [--json] | show IMAGE|REF | rm IMAGE|REF
                                                    prefetch profiles: list, print, remove
  profile push REF [--platform P]                   publish this node's prefetch profile of REF
                                                    beside its index in the registry
  umount  MOUNTPOINT|ID [--force] [--keep-upper]    unmount (--force: lazy detach; --keep-upper:
                                                    keep a writable mount's upper directory)
  ls      [--json]                                  list mounts: state, serving pid, reads, read errors
  inspect ARCHIVE                                   describe a .clip file and its image config
  cache   ls [--json] | prune [--all]               list the disk cache, or evict down to its budget
  version                                           print the versions of clipd and of the daemon

Global flags (also accepted after the command):
  --socket PATH   daemon socket (default: daemon.socket of the config)
  --config FILE   config file (default: /etc/clipd/config.toml when it exists)
  --version       same as 'clipd version' (before the command only)

Run 'clipd COMMAND --help' for the flags of one command.

` + exitCodesHelp

// env is what a command needs from the outside world.
type env struct {
	ctx    context.Context
	stdout io.Writer
	stderr io.Writer
	global *globals
}

type command func(e *env, args []string) error

// errHelp ends a command after its help was printed: exit status 0.
var errHelp = flag.ErrHelp

// run executes one clipd invocation and returns its exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := &globals{}
	fs := flag.NewFlagSet("clipd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	g.register(fs)
	showVersion := fs.Bool("version", false, "print the versions of clipd and of the daemon")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			return exitOK
		}
		fmt.Fprintf(stderr, "clipd: %v (run 'clipd help')\n", err)
		return exitUsage
	}
	e := &env{ctx: ctx, stdout: stdout, stderr: stderr, global: g}
	if *showVersion {
		return exitCode(printVersions(e))
	}
	if fs.NArg() == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	commands := map[string]command{
		"serve":   cmdServe,
		"index":   cmdIndex,
		"mount":   cmdMount,
		"umount":  cmdUmount,
		"ls":      cmdLs,
		"inspect": cmdInspect,
		"cache":   cmdCache,
		"pull":    cmdPull,
		"images":  cmdImages,
		"profile": cmdProfile,
		"version": cmdVersion,
		// Hidden: the per-mount serving process clipd serve starts.
		"serve-mount": cmdServeMount,
		"help": func(e *env, _ []string) error {
			fmt.Fprint(e.stdout, usage)
			return nil
		},
	}
	name := fs.Arg(0)
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "clipd: unknown command %q (run 'clipd help')\n", name)
		return exitUsage
	}
	err := cmd(e, fs.Args()[1:])
	if errors.Is(err, errHelp) {
		return exitOK
	}
	if err != nil {
		// Tools' stderr (fusermount) ends messages with newlines.
		fmt.Fprintf(stderr, "clipd: %s\n", strings.TrimSpace(err.Error()))
	}
	return exitCode(err)
}
