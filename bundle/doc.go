// Package bundle writes OCI runtime bundles: the config.json a runtime such
// as runc needs to start a container from an image's configuration on a
// rootfs clipd has mounted, with the defaults `runc spec` gives and the
// process settings `umoci unpack` derives from the image (args, env, cwd,
// user resolved through the image's own /etc/passwd and /etc/group).
package bundle
