package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/daemon"
)

// globals are the flags every command accepts.
type globals struct {
	socket string
	config string
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.socket, "socket", g.socket, "daemon socket (default: daemon.socket of the config)")
	fs.StringVar(&g.config, "config", g.config, "config file (default: "+daemon.DefaultConfigPath+" when it exists)")
}

// loadConfig reads --config, or the default file when it exists, or the
// defaults.
func (g *globals) loadConfig() (daemon.Config, error) {
	return daemon.LoadConfigDefault(g.config)
}

// client connects to --socket, or to the socket named by the config.
func (g *globals) client() (*api.Client, error) {
	if g.socket != "" {
		return api.NewClient(g.socket), nil
	}
	cfg, err := g.loadConfig()
	if err != nil {
		return nil, err
	}
	return api.NewClient(cfg.Daemon.Socket), nil
}

// cmdFlags is a command's flag set and its help.
type cmdFlags struct {
	*flag.FlagSet
	help func()
}

// newFlags returns a command's flag set with the global flags, and help
// that lists them. The flag package prints nothing itself (it would print
// the help on every error): --help goes to stdout, and an error is returned
// for run to print once.
func newFlags(e *env, name, synopsis string) *cmdFlags {
	fs := flag.NewFlagSet("clipd "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	e.global.register(fs)
	return &cmdFlags{FlagSet: fs, help: func() {
		fmt.Fprintf(e.stdout, "usage: clipd %s\n\nFlags:\n", synopsis)
		fs.SetOutput(e.stdout)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}}
}

// parse parses flags that may come before, between or after the positional
// arguments (clipd index SOURCE -o OUT), and checks their count.
func parse(fs *cmdFlags, args []string, minArgs, maxArgs int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.help()
				return nil, errHelp
			}
			return nil, usageErrorf("%s: %v (see '%s --help')", strings.TrimPrefix(fs.Name(), "clipd "), err, fs.Name())
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		if args[0] == "--" {
			pos = append(pos, args[1:]...)
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) < minArgs || len(pos) > maxArgs {
		want := fmt.Sprintf("%d to %d arguments", minArgs, maxArgs)
		switch {
		case minArgs == maxArgs && minArgs == 1:
			want = "1 argument"
		case minArgs == maxArgs:
			want = fmt.Sprintf("%d arguments", minArgs)
		}
		got := "none"
		if len(pos) > 0 {
			got = strings.Join(pos, " ")
		}
		return nil, usageErrorf("%s: want %s, got %s (see '%s --help')", strings.TrimPrefix(fs.Name(), "clipd "), want, got, fs.Name())
	}
	return pos, nil
}

// printJSON writes v to the command's output as indented JSON (the --json
// form of the listing commands).
func printJSON(e *env, v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
