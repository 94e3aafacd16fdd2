// Package mounter composes the data plane. Mounter is the in-process
// library that knows index, fetcher, cache and mount together; ServeMount
// runs it inside a serving process (clipd serve-mount), one per mount, which
// answers on a control socket (control.go). Spawner is the daemon's
// daemon.Mounter: it starts serving processes in their own session, so that
// they outlive the daemon, follows them, and adopts them again after a
// daemon restart. This package must not depend on the daemon's server, only
// on its interfaces and types.
package mounter
