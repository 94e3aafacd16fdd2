// Package mounter composes the data plane: it is the only place that knows
// index, fetcher, cache and mount together. It implements daemon.Mounter
// in-process; a later issue moves it into a per-mount serving process, which
// is why the daemon sees it only through that interface.
package mounter
