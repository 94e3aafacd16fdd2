package bundle

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/clipd/clipd/index"
	"github.com/moby/sys/user"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ConfigFile is the name of a bundle's configuration.
const ConfigFile = "config.json"

// DefaultPath is the PATH of an image whose config sets none (the one
// `runc spec` and Docker use).
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// DefaultHostname is the container's hostname when Options.Hostname is "".
const DefaultHostname = "clipd"

// Options say how the container is set up beyond the image's config.
type Options struct {
	// RootPath is the container's root filesystem (root.path), absolute:
	// the mountpoint, which need not lie inside the bundle directory.
	RootPath string
	// Readonly: the root filesystem is read-only (a mount that is not
	// writable); runc then remounts it read-only instead of failing to write.
	Readonly bool
	// Terminal gives the process a pseudo-terminal (and TERM=xterm).
	Terminal bool
	// Hostname of the container; DefaultHostname when "".
	Hostname string
	// Passwd and Group are the image's /etc/passwd and /etc/group (nil
	// when missing): a user given by name is resolved through them, and
	// the user's supplementary groups come from Group.
	Passwd, Group []byte
}

// Spec returns the runtime configuration for img on opts.RootPath.
func Spec(img *index.ImageInfo, opts Options) (*specs.Spec, error) {
	if img == nil {
		img = &index.ImageInfo{}
	}
	if !filepath.IsAbs(opts.RootPath) {
		return nil, fmt.Errorf("bundle: root path %q is not absolute", opts.RootPath)
	}
	args := append(append([]string{}, img.Entrypoint...), img.Cmd...)
	if len(args) == 0 {
		return nil, errors.New("bundle: the image config sets neither Entrypoint nor Cmd: nothing to run")
	}
	u, err := resolveUser(img.User, opts.Passwd, opts.Group)
	if err != nil {
		return nil, err
	}
	env := append([]string{}, img.Env...)
	if !hasEnv(env, "PATH") {
		env = append(env, DefaultPath)
	}
	if opts.Terminal && !hasEnv(env, "TERM") {
		env = append(env, "TERM=xterm")
	}
	// umoci sets HOME from the passwd entry; runc would otherwise do it at
	// start, but the config should say what the container gets.
	if !hasEnv(env, "HOME") && u.Home != "" {
		env = append(env, "HOME="+u.Home)
	}
	cwd := img.WorkingDir
	if cwd == "" {
		cwd = "/"
	}
	hostname := opts.Hostname
	if hostname == "" {
		hostname = DefaultHostname
	}
	procUser := specs.User{UID: uint32(u.Uid), GID: uint32(u.Gid)}
	for _, g := range u.Sgids {
		procUser.AdditionalGids = append(procUser.AdditionalGids, uint32(g))
	}
	caps := []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}
	capset := func() []string { return append([]string{}, caps...) }
	s := &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Terminal: opts.Terminal,
			User:     procUser,
			Args:     args,
			Env:      env,
			Cwd:      cwd,
			Capabilities: &specs.LinuxCapabilities{
				Bounding: capset(), Effective: capset(), Permitted: capset(), Ambient: capset(),
			},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: opts.RootPath, Readonly: opts.Readonly},
		Hostname: hostname,
		Mounts:   defaultMounts(),
		Linux: &specs.Linux{
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.MountNamespace},
			},
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
			},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
	return s, nil
}

// defaultMounts are the mounts of `runc spec`: the container gets its own
// /proc, /sys and a /dev tmpfs (runc fills it with the standard device
// nodes), so the image's own device nodes, which clipd serves nodev, are
// never used.
func defaultMounts() []specs.Mount {
	return []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs",
			Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts",
			Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm",
			Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue",
			Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs",
			Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup",
			Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
	}
}

// resolveUser turns the image's User ("", "name", "uid", "name:group",
// "uid:gid", ...) into ids the way runc and umoci do (moby/sys/user, the
// code runc itself uses): names must exist in the image's files, numeric ids
// need not; the supplementary groups are those /etc/group lists the user in
// when no group is given.
func resolveUser(spec string, passwd, group []byte) (*user.ExecUser, error) {
	var pr, gr io.Reader
	if passwd != nil {
		pr = bytes.NewReader(passwd)
	}
	if group != nil {
		gr = bytes.NewReader(group)
	}
	u, err := user.GetExecUser(spec, &user.ExecUser{Uid: 0, Gid: 0, Home: "/"}, pr, gr)
	if err != nil {
		shown := spec
		if shown == "" {
			shown = "(default, root)"
		}
		where := "the image's /etc/passwd and /etc/group"
		if passwd == nil {
			where = "the image (it has no /etc/passwd)"
		}
		return nil, fmt.Errorf("bundle: resolve image user %q through %s: %w", shown, where, err)
	}
	return u, nil
}

func hasEnv(env []string, name string) bool {
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k == name {
			return true
		}
	}
	return false
}
