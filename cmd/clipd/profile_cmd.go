package main

import "strings"

// profileHelp lists the profile subcommands.
const profileHelp = `usage: clipd profile push REF [--platform linux/amd64]

  push    publishes this node's prefetch profile of REF in the registry,
          attached to REF's platform manifest beside its index
`

// cmdProfile dispatches the profile subcommands.
func cmdProfile(e *env, args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") && args[0] != "--help" && args[0] != "-h" {
		return usageErrorf("profile: want a subcommand: push (see 'clipd profile --help')")
	}
	switch args[0] {
	case "push":
		return cmdProfilePush(e, args[1:])
	case "--help", "-h", "help":
		e.stdout.Write([]byte(profileHelp))
		return nil
	}
	return usageErrorf("profile: unknown subcommand %q (want push)", args[0])
}
