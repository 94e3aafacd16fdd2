package mounter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/cache"
	"github.com/clipd/clipd/daemon"
	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/mount"
	"github.com/clipd/clipd/profile"
)

// Config configures a Mounter.
type Config struct {
	// CacheDir is the on-disk span store shared by every mount.
	CacheDir string
	// CacheMaxSize and CacheMinFree are the cache budget (cache.max_size,
	// cache.min_free), recorded in the store for every process sharing it;
	// both 0 adopt the budget recorded there.
	CacheMaxSize, CacheMinFree int64
	Logger                     *slog.Logger // nil means slog.Default()
	// Profiles configure prefetch profiles (profiles.go).
	Profiles ProfileOptions
	// Fetcher holds the registry options: Insecure, MaxFetches (0: the
	// fetcher's default), and for tests a transport, retries, ... Its
	// Logger is Logger when left empty.
	Fetcher fetcher.Options
}

// Mounter mounts .clip archives in this process: it is what a serving
// process runs. One Fetcher (and so one cache and one deduplication of
// fetches) serves every mount.
type Mounter struct {
	fetcher *fetcher.Fetcher
	log     *slog.Logger
	metrics *processMetrics
	// profiles is the profile store; nil: no recording, no replay.
	profiles    *profile.Store
	profileOpts ProfileOptions
}

// New opens the cache and prepares the fetcher.
func New(cfg Config) (*Mounter, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	store, err := cache.OpenWith(cfg.CacheDir, cache.Options{MaxSize: cfg.CacheMaxSize, MinFree: cfg.CacheMinFree, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("open cache %s: %w", cfg.CacheDir, err)
	}
	opts := cfg.Fetcher
	if opts.Logger == nil {
		opts.Logger = log
	}
	pm := newProcessMetrics()
	opts.Transport, opts.Observer = pm.transport(opts.Transport), pm
	return &Mounter{fetcher: fetcher.New(store, opts), log: log, metrics: pm,
		profiles: openProfiles(cfg.Profiles, log), profileOpts: cfg.Profiles}, nil
}

// Mount opens req.Archive, prepares its layer readers and mounts it at
// req.Mountpoint. With req.Prefetch, every span is then fetched in the
// background (prefetch.go); with profiles on, the image's profile is
// replayed and the mount's first reads recorded (profiles.go).
func (m *Mounter) Mount(ctx context.Context, req daemon.MountRequest) (*Filesystem, error) {
	if req.Writable {
		return nil, errors.New("writable mounts are not supported yet")
	}
	t0 := time.Now()
	a, err := openIndex(req)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			return nil, fmt.Errorf("open archive %s: %w", req.Archive, err)
		}
		return nil, fmt.Errorf("%w: %w", daemon.ErrInvalidArchive, err)
	}
	tParsed := time.Now()
	// A v1 archive's data is read from the file itself, through the
	// descriptor the daemon opened with the peer's rights.
	a.Path = req.Archive
	if a.Format == index.FormatEmbedded {
		a.Path = blobPath(req)
	}
	layers, err := m.fetcher.OpenLayersWith(ctx, a, layoutOpener(req.As))
	if err != nil {
		if a.Path != req.Archive {
			err = fmt.Errorf("archive %s: %w", req.Archive, err)
		}
		return nil, err // it names the archive and the layer
	}
	a.Path = req.Archive
	// A registry that refuses the credentials would fail every read with
	// EIO: refuse the mount instead (one HEAD, a few ms on a registry that
	// answers; fetcher/access.go).
	if err := m.fetcher.CheckAccess(ctx, a); err != nil {
		layers.Close()
		var denied *fetcher.AccessDeniedError
		if errors.As(err, &denied) {
			return nil, fmt.Errorf("%w: %w", daemon.ErrRegistryUnauthorized, err)
		}
		return nil, err
	}
	readers := make([]io.ReaderAt, len(a.Layers))
	for i := range readers {
		readers[i] = layers.ReaderAt(i)
	}
	started := time.Now()
	fsys, err := mount.New(req.Mountpoint, a, readers, mount.Options{FsName: "clipd:" + req.Archive, Logger: m.log, Setuid: req.Setuid, Dir: req.Dir,
		ObserveRead: m.metrics.observeRead})
	if err != nil {
		layers.Close()
		if errors.Is(err, mount.ErrMoved) {
			return nil, fmt.Errorf("%w: %w", daemon.ErrMountpointMoved, err)
		}
		return nil, err
	}
	// Where a mount's start-up goes (README, "Fast mounts").
	m.log.Debug("mount phases", "mountpoint", req.Mountpoint, "nodes", len(a.Nodes),
		"index", tParsed.Sub(t0).Round(time.Microsecond), "layers", started.Sub(tParsed).Round(time.Microsecond),
		"fuse", time.Since(started).Round(time.Microsecond))
	pctx, stopPrefetch := context.WithCancel(context.Background())
	mt := &Filesystem{fs: fsys, layers: layers, image: summarize(a), done: make(chan struct{}), log: m.log, stopPrefetch: stopPrefetch,
		metrics: m.metrics, started: started}
	if m.profiles != nil {
		mt.profiled = make(chan struct{})
		go mt.runProfile(pctx, m.profiles, m.profileOpts, a, req)
	}
	go mt.wait()
	if req.Prefetch {
		go prefetch(pctx, a, layers, m.log)
	}
	return mt, nil
}

// Filesystem is one filesystem served by this process.
type Filesystem struct {
	fs     *mount.Mount
	layers fetcher.Layers
	image  Image
	done   chan struct{}
	log    *slog.Logger
	// stopPrefetch ends a background prefetch when the filesystem goes.
	stopPrefetch context.CancelFunc
	metrics      *processMetrics
	started      time.Time
	// profiled is closed when the mount's profile work (recording and
	// its merge) is over; nil without profiles.
	profiled chan struct{}
	// replayEnd is how the replay of the image's profile went
	// (fetcher.ReplayEnd, for the summary line); nil without one.
	replayEnd atomic.Value

	closeOnce sync.Once
}

// wait releases the layer readers once the kernel lets go of the
// filesystem, whoever unmounted it.
func (m *Filesystem) wait() {
	m.fs.Wait()
	m.stopPrefetch()
	// The recording is taken from the layers: before they close.
	m.waitProfile()
	m.closeOnce.Do(func() {
		if err := m.layers.Close(); err != nil {
			m.log.Warn("close layers", "mountpoint", m.fs.Mountpoint(), "err", err)
		}
	})
	m.logSummary()
	close(m.done)
}

// Unmount detaches the filesystem; force uses a lazy detach.
func (m *Filesystem) Unmount(force bool) error { return m.fs.Unmount(force) }

// Done is closed once the kernel has let go of the filesystem.
func (m *Filesystem) Done() <-chan struct{} { return m.done }

// Image is the summary of the mounted image (an Image).
func (m *Filesystem) Image() any { return m.image }

// Stats merges the fetcher's and the filesystem's figures.
func (m *Filesystem) Stats() api.MountStats {
	f, k := m.layers.Stats(), m.fs.Stats()
	return api.MountStats{
		BytesFetched:   f.BytesFetched,
		CacheHits:      f.CacheHits,
		CacheMisses:    f.CacheMisses,
		BytesFromCache: f.BytesFromCache,
		ReadAheads:     f.ReadAheads,
		Requests:       f.Requests,
		Reads:          k.Reads,
		BytesRead:      k.BytesRead,
		ReadErrors:     k.ReadErrors,
		FetchErrors:    m.metrics.failedFetches.Load(),
		LastError:      k.LastError,
		LastErrorTime:  k.LastErrorTime,

		PrefetchPlanned: f.PrefetchPlanned,
		PrefetchFetched: f.PrefetchFetched,
		PrefetchUsed:    f.PrefetchUsed,
		PrefetchWasted:  f.PrefetchWasted,

		PrefetchCancelled: f.PrefetchCancelled,
	}
}
