// Package cache owns the on-disk store shared by every mount on the host and
// by several processes at once. Entries are immutable files addressed by a
// key such as "sha256:ab12…/layer"; they are published atomically (written to
// a temporary file in the store, fsynced, then renamed into place), so a
// reader never sees a partial entry and two processes that race to store the
// same entry both succeed. Budget and eviction come later.
package cache
