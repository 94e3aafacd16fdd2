// Package daemon is clipd's control plane: the HTTP/1.1 JSON API on the Unix
// socket, peer authorization (SO_PEERCRED), the mount table and its
// persistence in state_dir, the configuration file and its live reload, the
// Prometheus metrics endpoint and graceful shutdown. The wire types and the
// JSON helpers are package api's. It sees the data plane only through the
// Mounter contract (mounter.Spawner in clipd): every mount is served by a
// process of its own that outlives the daemon, each call to it carries a
// deadline, at start the daemon adopts the mounts a previous one left and
// reports those it cannot as failed, and at shutdown it unmounts them or,
// with KeepMounts, leaves them to the next daemon. It knows nothing of FUSE,
// indexes or registries.
package daemon
