package fetcher

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/clipd/clipd/index"
)

// AccessDeniedError is a registry's definite refusal (401 or 403) of the
// credentials a mount would read its layers with.
type AccessDeniedError struct {
	Registry, Repository string
	Status               int
}

func (e *AccessDeniedError) Error() string {
	return fmt.Sprintf("registry %s refused access to %s (%d %s)", e.Registry, e.Repository, e.Status, http.StatusText(e.Status))
}

// maxAccessCheck bounds the access check: the ping, a token exchange and
// one HEAD on a registry that answers take far less.
const maxAccessCheck = 3 * time.Second

// CheckAccess asks the registry an archive's layers come from for the
// image's manifest (HEAD by digest; one of its layer blobs when the archive
// names no manifest digest), with the credentials and through the hosts
// (hosts.toml mirrors) the reads will use, so that a mount the registry
// will refuse fails before it is made instead of answering every read with
// EIO. Only a definite refusal (401, 403) is an error, an
// *AccessDeniedError: a registry that is unreachable, slow or failing now
// may be back by the time the files are read, which lazy loading
// tolerates, so that is logged and the mount goes on. Archives whose layers
// are not read from a registry need no check. The transport the check
// builds (ping, token) is kept for the reads.
//
// The manifest is asked rather than a blob because a pull-through cache
// (docker-registry in proxy mode) starts copying a whole blob from its
// upstream on any request for it, HEAD included: a check must not make a
// mirror download a layer nobody has read yet.
func (f *Fetcher) CheckAccess(ctx context.Context, a *index.Archive) error {
	if a.Format == 1 || a.Source.Layout != "" || a.Source.Registry == "" {
		return nil
	}
	var layer *index.Layer
	for i := range a.Layers {
		if !a.Layers[i].Embedded {
			layer = &a.Layers[i]
			break
		}
	}
	if layer == nil {
		return nil
	}
	b, err := f.registryBlob(a.Source, *layer, &counters{})
	if err != nil {
		return nil // the reads report a repository name they cannot use
	}
	ctx, cancel := context.WithTimeout(ctx, min(maxAccessCheck, f.opts.attemptTimeout()))
	defer cancel()
	start := time.Now()
	what := "layer " + short(layer.Digest)
	url := b.url()
	if strings.HasPrefix(a.Source.Manifest, "sha256:") {
		what = "manifest " + short(a.Source.Manifest)
		url = b.manifestURL(a.Source.Manifest)
	}
	status, err := b.head(ctx, url)
	if err != nil {
		status, _ = RegistryStatus(err)
	}
	if status == http.StatusUnauthorized || status == http.StatusForbidden {
		return &AccessDeniedError{Registry: b.repo.RegistryStr(), Repository: b.repo.RepositoryStr(), Status: status}
	}
	elapsed := time.Since(start).Round(100 * time.Microsecond)
	if err != nil || status >= 400 {
		why := fmt.Sprint(err)
		if err == nil {
			why = http.StatusText(status)
		}
		f.log.Warn("registry access check inconclusive, mounting anyway (reads will fetch when the registry answers)",
			"registry", b.repo.RegistryStr(), "repository", b.repo.RepositoryStr(), "asked", what, "elapsed", elapsed, "error", why)
		return nil
	}
	f.log.Debug("registry access checked", "registry", b.repo.RegistryStr(), "repository", b.repo.RepositoryStr(), "asked", what, "elapsed", elapsed)
	return nil
}

// manifestURL is the URL of manifest digest in b's repository.
func (b *registryBlob) manifestURL(digest string) string {
	return fmt.Sprintf("%s://%s/v2/%s/manifests/%s", b.repo.Registry.Scheme(), b.repo.RegistryStr(), b.repo.RepositoryStr(), digest)
}

// manifestAccept lists the manifest types a registry may hold: one it
// cannot answer in a listed type may say 404 to a HEAD by digest.
var manifestAccept = strings.Join([]string{
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
}, ", ")

// head makes one HEAD request for url in b's repository (its blob or a
// manifest), without retries, and returns the status of the answer.
func (b *registryBlob) head(ctx context.Context, url string) (int, error) {
	rt, err := b.f.transport(ctx, b.repo)
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept", manifestAccept)
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
