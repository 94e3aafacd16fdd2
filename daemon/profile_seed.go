package daemon

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"time"

	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/profile"
	"github.com/google/go-containerregistry/pkg/name"
)

// maxProfileTries bounds the profile artifacts a mount tries, newest
// first: a registry holding many bad ones must not make a mount fetch
// them all.
const maxProfileTries = 3

// profileFetchTimeout bounds fetching a profile: a mount waits for it once
// its index is staged, and a profile is only a hint.
const profileFetchTimeout = 10 * time.Second

// profileSeed is a profile artifact being fetched beside the index of an
// image staged by reference.
type profileSeed struct {
	cancel context.CancelFunc
	done   chan struct{}
	p      *profile.Profile // set before done is closed; nil: none usable
}

// fetchProfileSeed starts fetching the newest profile artifact of manifest
// that decodes and names manifest, unless the node holds a profile of its
// own (which always wins: it is this node's experience, a pushed profile
// only a seed). It runs beside the index's download, so that it adds no
// latency to the mount when the index takes longer; nil when there is
// nothing to fetch. A profile that cannot be fetched or decoded is logged
// and skipped: it never fails a mount.
func (s *Server) fetchProfileSeed(ctx context.Context, store *profile.Store, repo name.Repository, manifest string,
	arts []fetcher.ProfileArtifact, opts fetcher.Options, log *slog.Logger) *profileSeed {
	if len(arts) == 0 || store == nil {
		return nil
	}
	if _, err := store.Load(manifest); err == nil {
		log.Debug("prefetch profile in the registry not fetched: the node has its own")
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		log.Warn("local prefetch profile unreadable; a registry one may replace it", "err", err)
	}
	ctx, cancel := context.WithTimeout(ctx, profileFetchTimeout)
	ps := &profileSeed{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(ps.done)
		for i := len(arts) - 1; i >= 0 && i >= len(arts)-maxProfileTries; i-- { // newest last
			a := arts[i]
			b, err := fetcher.FetchProfile(ctx, repo, a, opts)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				log.Warn("prefetch profile in the registry unusable; ignored", "artifact", a.Manifest.String(), "err", err)
				continue
			}
			p, err := profile.Decode(bytes.NewReader(b))
			if err == nil && p.Image != manifest {
				err = errors.New("it is the profile of " + p.Image + ", not of manifest " + manifest)
			}
			if err != nil {
				log.Warn("prefetch profile in the registry refused; ignored", "artifact", a.Manifest.String(), "size", len(b), "err", err)
				continue
			}
			log.Debug("prefetch profile fetched from the registry", "artifact", a.Manifest.String(), "size", len(b))
			ps.p = p
			return
		}
	}()
	return ps
}

// wait returns the fetched profile, nil when none was usable.
func (ps *profileSeed) wait() *profile.Profile {
	if ps == nil {
		return nil
	}
	<-ps.done
	ps.cancel()
	return ps.p
}

// abandon stops the fetch (the index could not be staged) and waits for
// it, so that no goroutine outlives staging.
func (ps *profileSeed) abandon() {
	if ps != nil {
		ps.cancel()
		<-ps.done
	}
}

// seed checks the fetched profile against a, the staged index of
// manifest (its layers and span geometry: profile.Verify), and stores it
// unless the node has a profile by now. Every failure is a warning.
func (ps *profileSeed) seed(store *profile.Store, manifest string, a *index.Archive, log *slog.Logger) {
	p := ps.wait()
	if p == nil {
		return
	}
	if a == nil {
		log.Warn("prefetch profile from the registry not stored: the staged index could not be read")
		return
	}
	plan, err := profile.Verify(p, manifest, a)
	if err != nil {
		log.Warn("prefetch profile in the registry does not fit the image's index; ignored", "err", err)
		return
	}
	stored, err := store.Seed(p)
	switch {
	case err != nil:
		log.Warn("store prefetch profile from the registry", "err", err)
	case !stored:
		log.Info("prefetch profile from the registry not stored: the node has its own")
	default:
		log.Info("prefetch profile fetched from the registry", "spans", len(plan), "recordings", p.Recordings)
	}
}
