package daemon

import "runtime/debug"

// Version is the version recorded by the Go toolchain for the running
// binary, "devel" for a build from a work tree. Binaries built by the
// Makefile stamp their own version and pass it in Options.Version.
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok || bi.Main.Version == "" || bi.Main.Version == "(devel)" {
		return "devel"
	}
	return bi.Main.Version
}
