package fetcher

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	"github.com/clipd/clipd/profile"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
)

// The profile artifact: a node's prefetch profile of an image (package
// profile), published beside the index as an OCI 1.1 artifact whose
// subject is the platform manifest, with one layer, the profile's JSON
// (profile.MediaType). Pushing again adds a newer artifact; a node fetches
// the newest by its created annotation.
const (
	// ProfileArtifactType is the profile manifest's artifactType.
	ProfileArtifactType = "application/vnd.clipd.profile.v1"
	// AnnotationCreated is when the profile was pushed (RFC 3339, UTC,
	// nanoseconds): what orders the artifacts of one manifest.
	AnnotationCreated = "org.opencontainers.image.created"
	// AnnotationProfileManifest is the digest of the manifest the profile
	// was recorded for (also the subject's digest).
	AnnotationProfileManifest = "dev.clipd.profile.manifest"
	// AnnotationProfileRecordings is how many recordings the profile
	// merges.
	AnnotationProfileRecordings = "dev.clipd.profile.recordings"
)

// ProfileArtifact is one profile artifact attached to a manifest.
type ProfileArtifact struct {
	Manifest v1.Hash // the artifact manifest's digest
	// Created is the artifact's created annotation, as listed (zero when
	// absent or malformed: such an artifact sorts oldest).
	Created time.Time
	// Layer is the profile blob; nil until the manifest has been read.
	Layer *v1.Descriptor
}

func createdOf(ann map[string]string) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, ann[AnnotationCreated])
	return t
}

// sortProfiles orders p oldest first; ties by digest, so that every node
// picks the same one.
func sortProfiles(p []ProfileArtifact) {
	slices.SortStableFunc(p, func(a, b ProfileArtifact) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return bytes.Compare([]byte(a.Manifest.String()), []byte(b.Manifest.String()))
	})
}

// profileArtifact describes the profile artifact manifest m (digest d);
// its layer is nil when m is not a well-formed one.
func profileArtifact(d v1.Hash, m *v1.Manifest) *ProfileArtifact {
	p := &ProfileArtifact{Manifest: d, Created: createdOf(m.Annotations)}
	if len(m.Layers) == 1 && m.Layers[0].MediaType == profile.MediaType {
		l := m.Layers[0]
		p.Layer = &l
	}
	return p
}

// PublishProfile stores data, a profile's JSON (profile.Encode), in repo
// as a profile artifact whose subject is the platform manifest subject,
// created at created, and returns the artifact manifest's digest. The
// caller checks the profile; this only moves bytes.
func PublishProfile(ctx context.Context, repo name.Repository, subject v1.Descriptor, data []byte, recordings int, created time.Time, opts Options) (v1.Hash, error) {
	opts.Hosts = nil // writes go to the registry itself, as in PublishIndex
	layers := []v1.Layer{static.NewLayer(data, profile.MediaType)}
	descs := []v1.Descriptor{{MediaType: profile.MediaType, Size: int64(len(data)), Annotations: map[string]string{annotationTitle: "profile.json"}}}
	ann := map[string]string{
		AnnotationCreated:           created.UTC().Format(time.RFC3339Nano),
		AnnotationProfileManifest:   subject.Digest.String(),
		AnnotationProfileRecordings: strconv.Itoa(recordings),
	}
	h, err := publishArtifact(ctx, repo, subject, ProfileArtifactType, layers, descs, ann, remoteOptions(ctx, opts))
	if err != nil {
		return v1.Hash{}, fmt.Errorf("publish profile for %s@%s: %w", repo, subject.Digest, err)
	}
	return h, nil
}

// FetchProfile reads a's manifest (unless the listing already did) and
// returns its profile blob, at most profile.MaxBytes, verified against
// the digest and size the manifest gives. It does not decode it.
func FetchProfile(ctx context.Context, repo name.Repository, a ProfileArtifact, opts Options) ([]byte, error) {
	// One puller for the manifest and the blob: one transport, so one
	// /v2/ ping (and token) rather than one per request.
	ropts := remoteOptions(ctx, opts)
	if p, err := remote.NewPuller(ropts...); err == nil {
		ropts = append(ropts, remote.Reuse(p))
	}
	if a.Layer == nil {
		m, err := getArtifactManifestWith(repo, a.Manifest, ropts)
		if err != nil {
			return nil, err
		}
		if m.ArtifactType != ProfileArtifactType {
			return nil, fmt.Errorf("profile artifact %s@%s: artifact type %q", repo, a.Manifest, m.ArtifactType)
		}
		if a.Layer = profileArtifact(a.Manifest, m).Layer; a.Layer == nil {
			return nil, fmt.Errorf("profile artifact %s@%s: want one layer of %s", repo, a.Manifest, profile.MediaType)
		}
	}
	d := *a.Layer
	if d.Size <= 0 || d.Size > profile.MaxBytes {
		return nil, fmt.Errorf("fetch profile %s@%s: declared size %d outside 1-%d", repo, d.Digest, d.Size, profile.MaxBytes)
	}
	l, err := remote.Layer(repo.Digest(d.Digest.String()), ropts...)
	if err != nil {
		return nil, fmt.Errorf("fetch profile %s@%s: %w", repo, d.Digest, err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, fmt.Errorf("fetch profile %s@%s: %s: %w", repo, d.Digest, describeRegistryErr(err), err)
	}
	defer rc.Close()
	// The verifying reader checks the digest at EOF; the limit stops a
	// registry that sends more than the manifest says.
	b, err := io.ReadAll(io.LimitReader(rc, d.Size+1))
	if err != nil {
		return nil, fmt.Errorf("fetch profile %s@%s: %w", repo, d.Digest, err)
	}
	if int64(len(b)) != d.Size {
		return nil, fmt.Errorf("fetch profile %s@%s: got %d bytes, the artifact says %d", repo, d.Digest, len(b), d.Size)
	}
	return b, nil
}
