// Package daemon is clipd's control plane: the HTTP/1.1 JSON API on the Unix
// socket, peer authorization (SO_PEERCRED), the mount table and its
// persistence in state_dir, the configuration file and its live reload, the
// Prometheus metrics endpoint and graceful shutdown. It sees mounts only
// through the Mounter interface and knows nothing of FUSE, indexes or
// registries. Mounts served by their own processes (Survivor) outlive the
// daemon: at start it adopts them from the mount table (Adopter) and reports
// those it cannot as failed. client.go holds the small client the CLI and
// tests share.
package daemon
