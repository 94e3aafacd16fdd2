// Package daemon is clipd's control plane: the HTTP/1.1 JSON API on the Unix
// socket, peer authorization (SO_PEERCRED), the mount table and its
// persistence in state_dir, the configuration file, the Prometheus metrics
// endpoint and graceful shutdown. It sees mounts only through the Mounter
// interface and knows nothing of FUSE, indexes or registries, so that the
// data plane can move into per-mount serving processes without touching it.
// client.go holds the small client the CLI and tests share.
package daemon
