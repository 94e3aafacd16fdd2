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
	// Store is CacheDir already open (a spare serving process opens it
	// before its request, WarmSpare); nil: New opens it.
	Store *cache.Store
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
	store := cfg.Store
	if store == nil {
		var err error
		store, err = cache.OpenWith(cfg.CacheDir, cache.Options{MaxSize: cfg.CacheMaxSize, MinFree: cfg.CacheMinFree, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("open cache %s: %w", cfg.CacheDir, err)
		}
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
	// A registry that refuses the credentials would fail every read with
	// EIO: refuse the mount instead (one HEAD, fetcher/access.go). The
	// check needs only the decoded index, and its round trips (a new
	// connection, maybe a token, the HEAD: 5-30 ms against a local
	// registry on a loaded machine) take as long as the layer readers and
	// the FUSE mount together or longer, so it runs beside them; the mount
	// is not reported live, and is undone, unless the check lets it
	// through.
	access := make(chan error, 1)
	go func() { access <- m.fetcher.CheckAccess(ctx, a) }()
	// A v1 archive's data is read from the file itself, through the
	// descriptor the daemon opened with the peer's rights.
	path := req.Archive
	if a.Format == index.FormatEmbedded {
		path = blobPath(req)
	}
	layers, err := m.fetcher.OpenLayersWith(ctx, archiveAt(a, path), layoutOpener(req.As))
	if err != nil {
		if path != req.Archive {
			err = fmt.Errorf("archive %s: %w", req.Archive, err)
		}
		return nil, accessFirst(access, err) // it names the archive and the layer
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
			err = fmt.Errorf("%w: %w", daemon.ErrMountpointMoved, err)
		}
		return nil, accessFirst(access, err)
	}
	mounted := time.Now()
	if err := accessFirst(access, nil); err != nil {
		// Nobody was told of this mount: detach it before the failure is
		// reported, so that the daemon finds its mountpoint as it was.
		if uerr := fsys.Unmount(true); uerr != nil {
			m.log.Error("undo a mount refused by the registry", "mountpoint", req.Mountpoint, "err", uerr)
		}
		layers.Close()
		return nil, err
	}
	checked := time.Now()
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
	// Where a mount's start-up goes (README, "Fast mounts"); access_wait
	// is what the access check took beyond the FUSE mount.
	m.log.Debug("mount phases", "mountpoint", req.Mountpoint, "nodes", len(a.Nodes),
		"index", tParsed.Sub(t0).Round(time.Microsecond), "layers", started.Sub(tParsed).Round(time.Microsecond),
		"fuse", mounted.Sub(started).Round(time.Microsecond), "access_wait", checked.Sub(mounted).Round(time.Microsecond),
		"rest", time.Since(checked).Round(time.Microsecond), "total", time.Since(t0).Round(time.Microsecond))
	return mt, nil
}

// accessFirst waits for the registry access check started beside the
// mount and returns its refusal, which explains a failure better than
// anything that failed beside it; else err. Other check failures never
// fail a mount (fetcher.CheckAccess).
func accessFirst(access <-chan error, err error) error {
	aerr := <-access
	var denied *fetcher.AccessDeniedError
	if errors.As(aerr, &denied) {
		return fmt.Errorf("%w: %w", daemon.ErrRegistryUnauthorized, aerr)
	}
	if err == nil {
		return aerr
	}
	return err
}

// archiveAt is a with Path set to path, for the layer readers (a v1
// archive's data is read through the daemon's descriptor): a copy, since
// the mount, started beside the access check, names the archive itself.
func archiveAt(a *index.Archive, path string) *index.Archive {
	if path == a.Path {
		return a
	}
	c := *a
	c.Path = path
	return &c
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
