package profile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Dir is the store's directory name in daemon.state_dir.
const Dir = "profiles"

// Store is the profile store in one directory, shared by the daemon and
// every serving process of the node: writes are atomic (a reader sees the
// old profile or the new one) and merges hold a lock, so that two mounts
// of one image ending together both count.
type Store struct{ dir string }

// Open returns the store in dir, creating it (0700: a profile tells which
// files an image's containers read).
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("profile store %s: %w", dir, err)
	}
	return &Store{dir: dir}, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) path(image string) (string, error) {
	if !ValidImage(image) {
		return "", fmt.Errorf("profile %q: %w: not a sha256 digest", image, ErrInvalid)
	}
	return filepath.Join(s.dir, strings.Replace(image, ":", "-", 1)+".json"), nil
}

// Path is the file that holds the profile of image.
func (s *Store) Path(image string) (string, error) { return s.path(image) }

// Load returns the profile of image; an error wrapping fs.ErrNotExist when
// there is none.
func (s *Store) Load(image string) (*Profile, error) {
	p, err := s.path(image)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("profile of %s: %w", image, err)
	}
	defer f.Close()
	prof, err := Decode(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	if prof.Image != image {
		return nil, fmt.Errorf("%s: %w: it is the profile of %s", p, ErrInvalid, prof.Image)
	}
	return prof, nil
}

// Merge folds r into the stored profile of r.Image (creating it) and
// returns the result. A stored profile that cannot be read is replaced.
func (s *Store) Merge(r Recording) (*Profile, error) {
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	old, err := s.Load(r.Image)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		old = nil // unreadable or foreign: start again rather than never record
	}
	p, err := Merge(old, r, time.Now())
	if err != nil {
		return nil, err
	}
	return p, s.write(p)
}

// Put stores p as the profile of p.Image, replacing any (a profile pulled
// from the registry, or restored by an admin).
func (s *Store) Put(p *Profile) error {
	if err := p.check(); err != nil {
		return err
	}
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return s.write(p)
}

func (s *Store) write(p *Profile) error {
	dst, err := s.path(p.Image)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.dir, ".profile-*")
	if err != nil {
		return fmt.Errorf("write profile of %s: %w", p.Image, err)
	}
	defer os.Remove(tmp.Name())
	if err := p.Encode(tmp); err != nil {
		tmp.Close()
		return err
	}
	// A profile is a hint: losing the last merge to a power cut costs one
	// recording, so no fsync on the unmount path.
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write profile of %s: %w", p.Image, err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("write profile of %s: %w", p.Image, err)
	}
	return nil
}

// Remove deletes the profile of image; fs.ErrNotExist when there is none.
func (s *Store) Remove(image string) error {
	p, err := s.path(image)
	if err != nil {
		return err
	}
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := os.Remove(p); err != nil {
		return fmt.Errorf("remove profile of %s: %w", image, err)
	}
	return nil
}

// Summary is one stored profile, as listed.
type Summary struct {
	Image      string    `json:"image"`
	Layers     int       `json:"layers"`
	Spans      int       `json:"spans"`
	Recordings int       `json:"recordings"`
	Updated    time.Time `json:"updated"`
	Size       int64     `json:"size"`
	Err        string    `json:"error,omitempty"` // why the file cannot be used
}

// List returns every stored profile, by image; an unreadable one is listed
// with its error rather than hidden.
func (s *Store) List() ([]Summary, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list profiles in %s: %w", s.dir, err)
	}
	var out []Summary
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !e.Type().IsRegular() {
			continue
		}
		image := strings.Replace(name, "-", ":", 1)
		if !ValidImage(image) {
			continue
		}
		sum := Summary{Image: image}
		if fi, err := e.Info(); err == nil {
			sum.Size = fi.Size()
		}
		if p, err := s.Load(image); err != nil {
			sum.Err = err.Error()
		} else {
			sum.Layers, sum.Spans, sum.Recordings, sum.Updated = len(p.Layers), p.Spans(), p.Recordings, p.Updated
		}
		out = append(out, sum)
	}
	slices.SortFunc(out, func(a, b Summary) int { return strings.Compare(a.Image, b.Image) })
	return out, nil
}

// lock takes the store's lock, shared by every process on the node.
func (s *Store) lock() (func(), error) {
	p := filepath.Join(s.dir, ".lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock profile store: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock profile store %s: %w", p, err)
	}
	return func() { f.Close() }, nil
}
