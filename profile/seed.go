package profile

import (
	"errors"
	"io/fs"
)

// Seed stores p as the profile of p.Image unless the store already holds
// one that decodes, and reports whether it stored p. A profile pulled
// from a registry is a seed: the node's own profile (its experience) wins,
// and the check and the write hold the store's lock so that a merge ending
// meanwhile is not overwritten.
func (s *Store) Seed(p *Profile) (bool, error) {
	if err := p.check(); err != nil {
		return false, err
	}
	unlock, err := s.lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	_, err = s.Load(p.Image)
	var pe *fs.PathError
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, fs.ErrNotExist):
	case errors.As(err, &pe):
		// A file that cannot be read (permissions, I/O) is left be; one
		// that is not a profile is replaced, as Merge does.
		return false, err
	}
	return true, s.write(p)
}
