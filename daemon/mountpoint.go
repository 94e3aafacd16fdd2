package daemon

import (
	"errors"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
)

// resolveExisting resolves the symlinks of the longest existing prefix of p
// (absolute, clean) and appends the rest unchanged: where p would be created.
func resolveExisting(p string) (string, error) {
	cur, rest := p, ""
	for {
		r, err := filepath.EvalSymlinks(cur)
		if err == nil {
			return filepath.Join(r, rest), nil
		}
		if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, fs.ErrPermission) {
			return "", err
		}
		if cur == "/" {
			return "", err
		}
		rest = filepath.Join(filepath.Base(cur), rest)
		cur = filepath.Dir(cur)
	}
}

// underRoots reports whether real lies strictly below one of roots, each
// resolved the same way (a root may itself be a symlink, e.g. /run).
func underRoots(real string, roots []string) bool {
	for _, root := range roots {
		r, err := resolveExisting(root)
		if err != nil {
			continue
		}
		if strings.HasPrefix(real, strings.TrimSuffix(r, "/")+"/") {
			return true
		}
	}
	return false
}

// isRoot reports whether real is one of roots, each resolved.
func isRoot(real string, roots []string) bool {
	for _, root := range roots {
		if r, err := resolveExisting(root); err == nil && filepath.Clean(r) == real {
			return true
		}
	}
	return false
}

// checkMountpointPath applies the rules that need no file system changes and
// returns where the mountpoint really is.
func checkMountpointPath(p string, roots []string) (string, error) {
	if !filepath.IsAbs(p) {
		return "", badRequest("mountpoint %q must be an absolute path", p)
	}
	if filepath.Clean(p) != p || slices.Contains(strings.Split(p, "/"), "..") {
		return "", badRequest("mountpoint %q must be a clean path without \"..\"", p)
	}
	real, err := resolveExisting(p)
	if err != nil {
		return "", badRequest("mountpoint %s: %v", p, err)
	}
	if isRoot(real, roots) {
		return "", forbidden("mountpoint %s is a mount root itself: mount on a directory below it", p)
	}
	if !underRoots(real, roots) {
		if real != p {
			return "", forbidden("mountpoint %s resolves to %s, outside the mount roots (%s)", p, real, strings.Join(roots, ", "))
		}
		return "", forbidden("mountpoint %s is outside the mount roots (%s)", p, strings.Join(roots, ", "))
	}
	return real, nil
}
