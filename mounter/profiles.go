package mounter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"time"

	"github.com/clipd/clipd/daemon"
	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/profile"
)

// ProfileOptions configure prefetch profiles (package profile) in a
// Mounter: every mount records the spans its reads touch first for
// RecordFor and merges them into its image's profile in the store at Dir;
// with Replay, a mount whose image has a profile that fits fetches the
// profile's spans in the background once the workload reads one of them,
// and stops if its reads then leave the profile (fetcher.Replayer).
type ProfileOptions struct {
	Dir       string // the profile store; "" turns profiles off
	RecordFor time.Duration
	Replay    bool
}

// profileWaitTimeout bounds how long an unmount waits for the end of a
// recording (a merge into the store, under the store's lock): a profile is
// a hint and must not hold a filesystem's end.
const profileWaitTimeout = 10 * time.Second

// openProfiles opens the store of o; nil when profiles are off or the store
// cannot be opened (logged: a mount never fails for a profile).
func openProfiles(o ProfileOptions, log *slog.Logger) *profile.Store {
	if o.Dir == "" || (o.RecordFor <= 0 && !o.Replay) {
		return nil
	}
	s, err := profile.Open(o.Dir)
	if err != nil {
		log.Warn("prefetch profiles off: cannot open the store", "dir", o.Dir, "err", err)
		return nil
	}
	return s
}

// archiveKey is the profile key of the mounted archive (profile.Key): its
// manifest digest, or the digest of the file, read from the descriptor the
// mount was made from.
func archiveKey(a *index.Archive, req daemon.MountRequest) (string, error) {
	if profile.ValidImage(a.Source.Manifest) {
		return a.Source.Manifest, nil
	}
	f := req.ArchiveFile
	if f == nil {
		var err error
		if f, err = os.Open(req.Archive); err != nil {
			return "", fmt.Errorf("profile key of %s: %w", req.Archive, err)
		}
		defer f.Close()
	}
	// ReadAt: the descriptor is shared with the rest of the process, whose
	// offset must not move.
	return profile.Key(a, io.NewSectionReader(f, 0, a.FileSize))
}

// runProfile is a mount's profile work, off the mount's critical path:
// compute the image's key, start the replay of its profile, record the
// window, merge. ctx ends at the unmount; it returns once the recording
// is merged (Filesystem.wait waits for it before closing the layers).
func (m *Filesystem) runProfile(ctx context.Context, store *profile.Store, o ProfileOptions, a *index.Archive, req daemon.MountRequest) {
	defer close(m.profiled)
	if a.Format == index.FormatEmbedded {
		// A v1 archive holds its files' data: reads are local, there is
		// nothing to fetch ahead, and its key would hash the whole file.
		return
	}
	key, err := archiveKey(a, req)
	if err != nil {
		m.log.Warn("prefetch profile: no image key; neither recording nor replaying", "archive", req.Archive, "err", err)
		return
	}
	if o.Replay {
		m.replay(ctx, store, key, a)
	}
	if o.RecordFor > 0 {
		m.record(ctx, store, key, a, o.RecordFor)
	}
}

// replay starts fetching the spans of the image's profile, when it has one
// that fits a; a profile that does not is logged and ignored.
func (m *Filesystem) replay(ctx context.Context, store *profile.Store, key string, a *index.Archive) {
	file, _ := store.Path(key)
	p, err := store.Load(key)
	if errors.Is(err, fs.ErrNotExist) {
		m.log.Debug("no prefetch profile", "image", key)
		return
	}
	if err == nil {
		var plan []profile.Ref
		if plan, err = profile.Verify(p, key, a); err == nil {
			m.startReplay(ctx, key, file, p, plan)
			return
		}
	}
	m.log.Warn("prefetch profile refused; the mount goes on without it", "image", key, "profile", file, "err", err)
}

func (m *Filesystem) startReplay(ctx context.Context, key, file string, p *profile.Profile, plan []profile.Ref) {
	if len(plan) == 0 {
		m.log.Debug("prefetch profile has no span this index can fetch", "image", key, "profile", file)
		return
	}
	replay, ok := replayerOf(m.layers)
	if !ok {
		m.log.Debug("layers cannot replay a plan", "image", key)
		return
	}
	// The replay starts at the workload's first read of a span of the
	// profile, and stops if its reads leave the profile (fetcher.Replayer):
	// a profile recorded from another workload of the image costs
	// nothing, or little.
	m.log.Info("prefetch profile armed: replayed from the first read of one of its spans", "image", key, "profile", file, "spans", len(plan), "recordings", p.Recordings)
	m.replayEnd.Store(fetcher.ReplayWaiting.String())
	go func() {
		start := time.Now()
		end, err := replay(ctx, plan)
		m.replayEnd.Store(end.String())
		attrs := []any{"image", key, "spans", len(plan), "duration", time.Since(start).Round(time.Millisecond)}
		switch {
		case end == fetcher.ReplayWaiting:
			m.log.Info("prefetch profile not replayed: no read touched its spans", attrs...)
		case end == fetcher.ReplayDiverged:
			m.log.Info("prefetch profile replay cancelled: the workload's reads left the profile", attrs...)
		case ctx.Err() != nil:
			m.log.Info("prefetch profile replay stopped at the unmount", attrs...)
		case err != nil:
			m.log.Warn("prefetch profile replayed with errors", append(attrs, "err", err)...)
		default:
			m.log.Info("prefetch profile replayed", attrs...)
		}
	}()
}

// record waits for the end of the recording window (or the unmount), then
// merges what the mount's reads touched into the image's profile.
func (m *Filesystem) record(ctx context.Context, store *profile.Store, key string, a *index.Archive, d time.Duration) {
	t := time.NewTimer(d - time.Since(m.started))
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	touches, ok := layerTouches(m.layers)
	if !ok {
		m.log.Debug("layers do not record touches", "image", key)
		return
	}
	if len(touches) == 0 {
		m.log.Debug("prefetch profile: nothing read in the recording window", "image", key)
		return
	}
	rec := profile.NewRecording(key, a)
	rec.Touches = touches
	p, err := store.Merge(rec)
	if err != nil {
		m.log.Warn("prefetch profile: merge the recording", "image", key, "err", err)
		return
	}
	file, _ := store.Path(key)
	m.log.Info("prefetch profile recorded", "image", key, "spans_recorded", len(touches), "profile_spans", p.Spans(),
		"recordings", p.Recordings, "profile", file)
}

// waitProfile waits, bounded, for the end of the mount's profile work.
func (m *Filesystem) waitProfile() {
	if m.profiled == nil {
		return
	}
	t := time.NewTimer(profileWaitTimeout)
	defer t.Stop()
	select {
	case <-m.profiled:
	case <-t.C:
		m.log.Warn("prefetch profile: recording not merged in time; the unmount goes on", "timeout", profileWaitTimeout)
	}
}
