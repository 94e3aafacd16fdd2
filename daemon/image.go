package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/indexstore"
	"github.com/clipd/clipd/profile"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// stageTimeout bounds staging an image's index (resolving, fetching the
// index, or building it by streaming every layer): a registry that stops
// answering must not hold a mount request forever.
const stageTimeout = 30 * time.Minute

// imageMount is an image reference staged for mounting: its index in the
// store, opened, and where it came from.
type imageMount struct {
	file     *os.File // the stored index, passed to the serving process
	path     string
	ref      string
	manifest string
	source   string // indexstore.Source*
	creds    fetcher.Credentials
}

// requestCredentials takes per-mount credentials from the X-Registry-Auth
// header or the body's "auth"; none means the daemon-wide keychain.
func requestCredentials(r *http.Request, req api.CreateMount) (fetcher.Credentials, error) {
	h := r.Header.Get(api.RegistryAuthHeader)
	switch {
	case h != "" && req.Auth != nil:
		return fetcher.Credentials{}, badRequest(`credentials given twice: send either the %s header or "auth"`, api.RegistryAuthHeader)
	case h != "":
		c, err := fetcher.ParseRegistryAuth(h)
		if err != nil {
			return fetcher.Credentials{}, badRequest("%v", err)
		}
		return c, nil
	case req.Auth != nil:
		return fetcher.Credentials{Username: req.Auth.Username, Password: req.Auth.Password, IdentityToken: req.Auth.IdentityToken}, nil
	}
	return fetcher.Credentials{}, nil
}

// stageImage resolves req.Image to its platform manifest with the
// request's credentials (always: a stored index must not let a peer mount
// an image it could not pull), then finds its index: the store, the
// registry's index artifact, or a build by streaming.
func (s *Server) stageImage(ctx context.Context, req api.CreateMount, creds fetcher.Credentials) (*imageMount, error) {
	cfg := s.config()
	if strings.HasPrefix(req.Image, fetcher.LayoutPrefix) {
		return nil, apiErr(http.StatusBadRequest, api.CodeBadReference, "image %q: only registry references can be mounted (index an OCI layout with clipd index)", req.Image)
	}
	ref, err := fetcher.ParseReference(req.Image, cfg.Registry.Insecure)
	if err != nil {
		return nil, apiErr(http.StatusBadRequest, api.CodeBadReference, "image %q: %v", req.Image, err)
	}
	platform := fetcher.DefaultPlatform()
	if req.Platform != "" {
		if platform, err = v1.ParsePlatform(req.Platform); err != nil {
			return nil, badRequest("platform %q: %v", req.Platform, err)
		}
	}
	opts := fetcher.Options{Insecure: cfg.Registry.Insecure, Keychain: creds.Keychain(), Logger: s.log}
	// Checked when the configuration was loaded; a file that went bad
	// since fails the mount rather than skipping the mirrors silently.
	if opts.Hosts, err = fetcher.LoadHostsDir(cfg.Registry.ConfigPath); err != nil {
		return nil, fmt.Errorf("registry.config_path: %w", err)
	}
	// The image keeps this context for every later registry call (config,
	// referrers, layers of a build): it ends with staging, not before.
	ctx, cancel := context.WithTimeout(ctx, stageTimeout)
	defer cancel()
	img, src, err := fetcher.ResolveImage(ctx, req.Image, platform, opts)
	if err != nil {
		return nil, registryError(ref, platform, err)
	}
	if req.Platform != "" {
		// A single-platform image answers any platform: check its config.
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, registryError(ref, platform, err)
		}
		if p := cf.Platform(); p != nil && p.OS != "" && !p.Satisfies(*platform) {
			return nil, apiErr(http.StatusNotFound, api.CodePlatformNotFound, "image %s is for platform %s, not %s", ref, p, platform)
		}
	}
	store, err := indexstore.Open(filepath.Join(cfg.Daemon.StateDir, indexstore.Dir))
	if err != nil {
		return nil, err
	}
	// A profile store that cannot be opened costs the profile, not the
	// mount.
	profiles, err := profile.Open(filepath.Join(cfg.Daemon.StateDir, profile.Dir))
	if err != nil {
		s.log.Warn("prefetch profiles from the registry disabled", "err", err)
		profiles = nil
	}
	im := &imageMount{ref: req.Image, manifest: src.Manifest, creds: creds}
	key := ref.Context().Name() + "@" + src.Manifest
	v, err, _ := s.staging.Do(key, func() (any, error) {
		return s.findIndex(ctx, store, profiles, ref, img, src, opts, cfg.Index)
	})
	if err != nil {
		return nil, err
	}
	im.source = v.(string)
	if im.file, err = store.Open(src.Manifest); err != nil {
		return nil, fmt.Errorf("open staged index of %s: %w", req.Image, err)
	}
	im.path = im.file.Name()
	return im, nil
}

// findIndex makes sure the store holds an index of img usable for ref's
// repository and says where it came from. When it asks the registry, it
// also seeds the profile store with the image's newest profile artifact
// found by the same listing (fetchProfileSeed), unless the node has one.
func (s *Server) findIndex(ctx context.Context, store *indexstore.Store, profiles *profile.Store, ref name.Reference, img v1.Image, src index.Source, opts fetcher.Options, ic IndexConfig) (string, error) {
	digest := src.Manifest
	repo := ref.Context()
	if stored(store, digest, repo) {
		return indexstore.SourceStore, nil
	}
	log := s.log.With("image", ref.String(), "manifest", digest)
	meta := indexstore.Meta{Image: ref.String()}
	refs, err := fetcher.FindReferrers(ctx, repo, mustHash(digest), opts)
	if err != nil {
		if st, _ := fetcher.RegistryStatus(err); st == http.StatusUnauthorized || st == http.StatusForbidden {
			return "", registryError(ref, nil, err)
		}
		log.Warn("listing index artifacts failed; looking elsewhere", "err", err)
	}
	arts := refs.Indexes
	seed := s.fetchProfileSeed(ctx, profiles, repo, digest, refs.Profiles, opts, log)
	defer seed.abandon()
	var mismatches []string
	for i := len(arts) - 1; i >= 0; i-- { // the newest last
		a, why, err := s.stageArtifact(ctx, store, repo, arts[i], img, src, opts, meta)
		if err != nil {
			return "", err
		}
		if a != nil {
			log.Info("index fetched from the registry", "artifact", arts[i].Manifest.String(), "size", arts[i].Layer.Size)
			seed.seed(profiles, digest, a, log)
			s.pruneIndexes(store, ic, digest)
			return indexstore.SourceRegistry, nil
		}
		if why != "" {
			mismatches = append(mismatches, fmt.Sprintf("artifact %s: %s", arts[i].Manifest, why))
		}
	}
	if len(mismatches) > 0 {
		return "", apiErr(http.StatusUnprocessableEntity, api.CodeIndexMismatch,
			"index in the registry for %s (manifest %s) does not match the image, not mounted: %s",
			ref, digest, strings.Join(mismatches, "; "))
	}
	if !ic.BuildMissing {
		return "", apiErr(http.StatusNotFound, api.CodeIndexNotFound,
			"no index for %s (manifest %s) in the store or the registry, and index.build_missing is off (publish one with clipd index --push)", ref, digest)
	}
	log.Warn("no index found: building it by streaming every layer of the image (a full download)")
	start := time.Now()
	a, err := index.Build(ctx, img, index.BuildOptions{Source: registrySource(ref, digest)})
	if err != nil {
		if st, _ := fetcher.RegistryStatus(err); st != 0 {
			return "", registryError(ref, nil, err)
		}
		return "", fmt.Errorf("build index of %s: %w", ref, err)
	}
	meta.Source = indexstore.SourceBuilt
	if err := putArchive(store, digest, meta, a); err != nil {
		return "", err
	}
	log.Info("index built", "duration", time.Since(start).Round(time.Millisecond))
	seed.seed(profiles, digest, a, log)
	s.pruneIndexes(store, ic, digest)
	return indexstore.SourceBuilt, nil
}

// stageArtifact fetches one index artifact, checks it against the image and
// stores it, and returns it parsed. A mismatch is not an error: the
// archive is nil and why says what differs; an artifact that cannot be
// fetched gives neither.
func (s *Server) stageArtifact(ctx context.Context, store *indexstore.Store, repo name.Repository, art fetcher.IndexArtifact,
	img v1.Image, src index.Source, opts fetcher.Options, meta indexstore.Meta) (staged *index.Archive, why string, err error) {
	tmp, err := os.CreateTemp(filepath.Dir(mustPath(store, src.Manifest)), ".fetch-*")
	if err != nil {
		return nil, "", fmt.Errorf("stage index: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := fetcher.FetchIndex(ctx, repo, art, tmp, opts); err != nil {
		if st, _ := fetcher.RegistryStatus(err); st == http.StatusUnauthorized || st == http.StatusForbidden {
			return nil, "", registryError(repo.Tag("index"), nil, err)
		}
		// Not a verdict on the index (a blob gone from the registry, a
		// network failure): look elsewhere, the build is exact.
		s.log.Warn("index artifact unusable; looking elsewhere", "artifact", art.Manifest.String(), "err", err)
		return nil, "", nil
	}
	a, err := index.OpenFile(tmp, tmp.Name())
	if err != nil {
		return nil, fmt.Sprintf("not a readable .clip file: %v", err), nil
	}
	if err := fetcher.CheckIndex(a, img, src.Manifest); err != nil {
		return nil, err.Error(), nil
	}
	// The windows the .clip names must be the artifact's own second layer:
	// mounts fetch them from this repository by that digest.
	if a.Windows != nil && (art.Windows == nil || art.Windows.Digest.String() != a.Windows.Digest || art.Windows.Size != a.Windows.Size) {
		return nil, fmt.Sprintf("index names windows blob %s, which the artifact does not carry", a.Windows.Digest), nil
	}
	meta.Source = indexstore.SourceRegistry
	if a.Source.Registry == repo.RegistryStr() && a.Source.Repository == repo.RepositoryStr() && a.Source.Layout == "" {
		// Stored byte for byte.
		_, err = store.Put(src.Manifest, meta, func(f *os.File) error {
			if _, err := tmp.Seek(0, io.SeekStart); err != nil {
				return err
			}
			_, err := io.Copy(f, tmp)
			return err
		})
		if err != nil {
			return nil, "", err
		}
		return a, "", nil
	}
	// Built elsewhere (another registry, a layout): the layers are
	// checked to be this image's, so fetch them from where it was found.
	a.Source = registrySource(repo.Digest(src.Manifest), src.Manifest)
	if err := putArchive(store, src.Manifest, meta, a); err != nil {
		return nil, "", err
	}
	return a, "", nil
}

// stored reports a stored index of digest made for repo: the index names
// the repository its layers are fetched from.
func stored(store *indexstore.Store, digest string, repo name.Repository) bool {
	list, err := store.List()
	if err != nil {
		return false
	}
	for _, e := range list {
		if e.Digest != digest {
			continue
		}
		r, err := name.ParseReference(e.Meta.Image, name.Insecure)
		return err == nil && r.Context().Name() == repo.Name()
	}
	return false
}

func registrySource(ref name.Reference, digest string) index.Source {
	return index.Source{Registry: ref.Context().RegistryStr(), Repository: ref.Context().RepositoryStr(),
		Reference: ref.Identifier(), Manifest: digest}
}

// putArchive encodes a into the store.
func putArchive(store *indexstore.Store, digest string, meta indexstore.Meta, a *index.Archive) error {
	dir, err := os.MkdirTemp(filepath.Dir(mustPath(store, digest)), ".build-")
	if err != nil {
		return fmt.Errorf("stage index: %w", err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "index.clip")
	// An index whose windows are in a registry blob keeps them there (a.Source
	// names the repository that holds it); one built here keeps them inline.
	mode := index.WindowsInline
	if a.Windows != nil {
		mode = index.WindowsSeparate
	}
	if _, err := index.WriteFileWith(tmp, a, index.WriteOptions{Windows: mode}); err != nil {
		return err
	}
	in, err := os.Open(tmp)
	if err != nil {
		return err
	}
	defer in.Close()
	_, err = store.Put(digest, meta, func(f *os.File) error { _, err := io.Copy(f, in); return err })
	return err
}

// pruneIndexes keeps the store within index.max_size, sparing indexes that
// mounts use and the one just staged.
func (s *Server) pruneIndexes(store *indexstore.Store, ic IndexConfig, keep string) {
	if ic.MaxSize <= 0 {
		return
	}
	used := map[string]bool{}
	s.mu.Lock()
	for _, e := range s.mounts {
		used[e.Archive] = true
	}
	s.mu.Unlock()
	// An index staged a moment ago may belong to a mount request not yet
	// in the table: spare it.
	removed, err := store.Prune(int64(ic.MaxSize), func(e indexstore.Entry) bool {
		return e.Digest == keep || used[e.Path] || time.Since(e.Used) < time.Minute
	})
	if err != nil {
		s.log.Warn("prune index store", "err", err)
	}
	for _, e := range removed {
		s.log.Info("index store over budget: removed index", "manifest", e.Digest, "image", e.Meta.Image, "size", e.Size)
	}
}

func mustHash(d string) v1.Hash {
	h, _ := v1.NewHash(d)
	return h
}

func mustPath(store *indexstore.Store, d string) string {
	p, _ := store.Path(d)
	return p
}

// registryError turns a failure to reach or read an image into an answer
// that names the registry and what it said; never the credentials.
func registryError(ref name.Reference, platform *v1.Platform, err error) *api.Error {
	host := ref.Context().RegistryStr()
	status, unreachable := fetcher.RegistryStatus(err)
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return apiErr(status, api.CodeRegistryUnauthorized,
			"registry %s refused access to %s (%d %s): credentials missing or wrong (send them with %s or \"auth\", or in the daemon's docker config.json)",
			host, ref.Context().RepositoryStr(), status, http.StatusText(status), api.RegistryAuthHeader)
	case fetcher.IsNotFound(err):
		return apiErr(http.StatusNotFound, api.CodeImageNotFound, "image %s not found in registry %s", ref, host)
	case errors.Is(err, fetcher.ErrNoPlatform) || platform != nil && strings.Contains(err.Error(), "no child with platform"):
		return apiErr(http.StatusNotFound, api.CodePlatformNotFound, "image %s has no manifest for platform %s", ref, platform)
	case unreachable || errors.Is(err, context.DeadlineExceeded):
		return apiErr(http.StatusBadGateway, api.CodeRegistryUnavailable, "registry %s is unreachable: %v", host, err)
	case status != 0:
		return apiErr(http.StatusBadGateway, api.CodeRegistryUnavailable, "registry %s answered %d %s for %s", host, status, http.StatusText(status), ref)
	case errors.Is(err, fs.ErrNotExist):
		return apiErr(http.StatusNotFound, api.CodeImageNotFound, "image %s: %v", ref, err)
	}
	return apiErr(http.StatusBadGateway, api.CodeRegistryUnavailable, "image %s from registry %s: %v", ref, host, err)
}

// openSource opens what a mount request names: the archive, with the
// peer's rights, or the index of an image reference, staged in the store.
func (s *Server) openSource(r *http.Request, req api.CreateMount) (*imageMount, *os.File, error) {
	if req.Image == "" {
		f, err := openArchive(peerFrom(r.Context()), req.Archive)
		return nil, f, err
	}
	creds, err := requestCredentials(r, req)
	if err != nil {
		return nil, nil, err
	}
	im, err := s.stageImage(r.Context(), req, creds)
	if err != nil {
		var ae *api.Error
		if errors.As(err, &ae) {
			s.log.Warn("mount by reference refused", "image", req.Image, "status", ae.Status, "code", ae.Code, "err", ae.Message)
		}
		return nil, nil, err
	}
	s.log.Info("image staged", "image", im.ref, "manifest", im.manifest, "index_source", im.source, "index", im.path)
	return im, im.file, nil
}

// credentials are the request's own, for the serving process; nil for
// archive mounts and daemon-wide credentials.
func (im *imageMount) credentials() *fetcher.Credentials {
	if im == nil || im.creds.Empty() {
		return nil
	}
	c := im.creds
	return &c
}
