package fetcher

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/countio"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// MaxIndexArtifactSize bounds the .clip blob read from a registry: the
// largest file index.Open accepts (index section plus extension) and some.
const MaxIndexArtifactSize = 1 << 30

// maxArtifactManifest bounds an artifact manifest: a few hundred bytes.
const maxArtifactManifest = 1 << 20

// IndexArtifact is one index artifact found attached to a manifest.
type IndexArtifact struct {
	Manifest v1.Hash // the artifact manifest's digest
	// Layer is the .clip, byte for byte (IndexLayerMediaType), or
	// zstd-compressed (index.ClipZstdMediaType) when its checkpoint
	// windows are in the second layer, Windows.
	Layer       v1.Descriptor
	Windows     *v1.Descriptor
	Annotations map[string]string
}

// Referrers are the clipd artifacts attached to one manifest, found by
// one listing.
type Referrers struct {
	// Indexes are the index artifacts, in the order the registry lists
	// them.
	Indexes []IndexArtifact
	// Profiles are the prefetch profile artifacts, oldest first by their
	// created annotation (see FetchProfile); their manifests are read only
	// when one is fetched.
	Profiles []ProfileArtifact
}

// FindIndexes lists the index artifacts attached to manifest in repo
// (referrers API, or the sha256-<hex> tag schema on registries without it),
// newest listed last as registries append them. An image without any gives
// an empty list, not an error.
func FindIndexes(ctx context.Context, repo name.Repository, manifest v1.Hash, opts Options) ([]IndexArtifact, error) {
	r, err := FindReferrers(ctx, repo, manifest, opts)
	return r.Indexes, err
}

// FindReferrers lists the index and profile artifacts attached to manifest
// in repo with one listing, so that a mount by reference learns of a
// profile without a request of its own. An image without any gives empty
// lists, not an error.
func FindReferrers(ctx context.Context, repo name.Repository, manifest v1.Hash, opts Options) (Referrers, error) {
	// No artifactType filter: some registries list an artifact under its
	// config media type (the empty one) instead of the manifest's
	// artifactType; the manifest itself decides (readArtifactManifest).
	idx, err := remote.Referrers(repo.Digest(manifest.String()), remoteOptions(ctx, opts)...)
	if err != nil {
		return Referrers{}, fmt.Errorf("list index artifacts of %s@%s: %s: %w", repo, manifest, describeRegistryErr(err), err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return Referrers{}, fmt.Errorf("list index artifacts of %s@%s: %w", repo, manifest, err)
	}
	var out Referrers
	for _, d := range im.Manifests {
		switch d.ArtifactType {
		case ProfileArtifactType:
			// Read when fetched: only the newest usable one is.
			out.Profiles = append(out.Profiles, ProfileArtifact{Manifest: d.Digest, Created: createdOf(d.Annotations)})
			continue
		case IndexArtifactType, emptyConfigMediaType, "":
			if _, ok := d.Annotations[AnnotationProfileManifest]; ok && d.ArtifactType != IndexArtifactType {
				// A profile listed under its config type: its
				// annotations say so, and it is read only if fetched
				// (one artifact per push: reading them all here would
				// slow every mount).
				out.Profiles = append(out.Profiles, ProfileArtifact{Manifest: d.Digest, Created: createdOf(d.Annotations)})
				continue
			}
		default:
			continue
		}
		a, p, err := readArtifactManifest(ctx, repo, d.Digest, opts)
		if err != nil {
			return Referrers{}, err
		}
		if a != nil {
			out.Indexes = append(out.Indexes, *a)
		}
		if p != nil {
			out.Profiles = append(out.Profiles, *p)
		}
	}
	sortProfiles(out.Profiles)
	return out, nil
}

// readArtifactManifest reads a clipd artifact's manifest: an index
// artifact, a profile artifact, or neither (nil, nil) when it is not one
// (another artifact type, wrong layer count or media type).
func readArtifactManifest(ctx context.Context, repo name.Repository, d v1.Hash, opts Options) (*IndexArtifact, *ProfileArtifact, error) {
	m, err := getArtifactManifest(ctx, repo, d, opts)
	if err != nil {
		return nil, nil, err
	}
	switch m.ArtifactType {
	case ProfileArtifactType:
		p := profileArtifact(d, m)
		return nil, p, nil
	case IndexArtifactType:
	default:
		return nil, nil, nil
	}
	switch {
	case len(m.Layers) == 1 && m.Layers[0].MediaType == IndexLayerMediaType:
		return &IndexArtifact{Manifest: d, Layer: m.Layers[0], Annotations: m.Annotations}, nil, nil
	case len(m.Layers) == 2 && m.Layers[0].MediaType == index.ClipZstdMediaType && m.Layers[1].MediaType == index.WindowsMediaType:
		return &IndexArtifact{Manifest: d, Layer: m.Layers[0], Windows: &m.Layers[1], Annotations: m.Annotations}, nil, nil
	}
	return nil, nil, nil
}

// getArtifactManifest reads the artifact manifest d of repo, bounded.
func getArtifactManifest(ctx context.Context, repo name.Repository, d v1.Hash, opts Options) (*v1.Manifest, error) {
	return getArtifactManifestWith(repo, d, remoteOptions(ctx, opts))
}

func getArtifactManifestWith(repo name.Repository, d v1.Hash, ropts []remote.Option) (*v1.Manifest, error) {
	desc, err := remote.Get(repo.Digest(d.String()), ropts...)
	if err != nil {
		return nil, fmt.Errorf("read artifact %s@%s: %s: %w", repo, d, describeRegistryErr(err), err)
	}
	if len(desc.Manifest) > maxArtifactManifest {
		return nil, fmt.Errorf("read artifact %s@%s: manifest of %d bytes", repo, d, len(desc.Manifest))
	}
	var m v1.Manifest
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		return nil, fmt.Errorf("read artifact %s@%s: %w", repo, d, err)
	}
	return &m, nil
}

// FetchIndex downloads a's .clip blob into w, verifying its size and
// digest as it streams (go-containerregistry's verifying reader), and
// decompressing it when it is the zstd form. It returns the bytes
// downloaded.
func FetchIndex(ctx context.Context, repo name.Repository, a IndexArtifact, w io.Writer, opts Options) (int64, error) {
	if a.Layer.Size <= 0 || a.Layer.Size > MaxIndexArtifactSize {
		return 0, fmt.Errorf("fetch index %s@%s: declared size %d outside 1-%d", repo, a.Layer.Digest, a.Layer.Size, MaxIndexArtifactSize)
	}
	l, err := remote.Layer(repo.Digest(a.Layer.Digest.String()), remoteOptions(ctx, opts)...)
	if err != nil {
		return 0, fmt.Errorf("fetch index %s@%s: %w", repo, a.Layer.Digest, err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return 0, fmt.Errorf("fetch index %s@%s: %s: %w", repo, a.Layer.Digest, describeRegistryErr(err), err)
	}
	defer rc.Close()
	cr := countio.NewReader(io.LimitReader(rc, a.Layer.Size+1))
	if a.Layer.MediaType == index.ClipZstdMediaType {
		_, err = index.DecompressClip(w, cr)
	} else {
		_, err = io.Copy(w, cr)
	}
	n := cr.Count()
	if err != nil {
		return n, fmt.Errorf("fetch index %s@%s: %w", repo, a.Layer.Digest, err)
	}
	if n != a.Layer.Size {
		return n, fmt.Errorf("fetch index %s@%s: got %d bytes, the artifact says %d", repo, a.Layer.Digest, n, a.Layer.Size)
	}
	return n, nil
}

// CheckIndex tells whether a, an index found in a registry, was built for
// img, whose manifest digest is manifest: it must name that digest and
// list exactly img's layers (digest, size and media type, in order). The
// error names the first mismatch. Spans are verified separately, by the
// SHA-256 the index records for each; what this check cannot see is a
// tree that lies about what the layers hold (README, "Trust model").
func CheckIndex(a *index.Archive, img v1.Image, manifest string) error {
	if a.Format != index.FormatOCI {
		return fmt.Errorf("index is a format %d archive, not an OCI index", a.Format)
	}
	if a.Source.Manifest != manifest {
		got := a.Source.Manifest
		if got == "" {
			got = "no manifest digest"
		}
		return fmt.Errorf("index was built for %s, not for manifest %s", got, manifest)
	}
	m, err := img.Manifest()
	if err != nil {
		return fmt.Errorf("read manifest %s: %w", manifest, err)
	}
	if len(m.Layers) != len(a.Layers) {
		return fmt.Errorf("index lists %d layers, manifest %s has %d", len(a.Layers), manifest, len(m.Layers))
	}
	for i, l := range m.Layers {
		il := a.Layers[i]
		switch {
		case il.Digest != l.Digest.String():
			return fmt.Errorf("layer %d: index has %s, manifest has %s", i+1, il.Digest, l.Digest)
		case il.Size != l.Size:
			return fmt.Errorf("layer %d (%s): index says %d bytes, manifest says %d", i+1, l.Digest, il.Size, l.Size)
		case il.MediaType != string(l.MediaType):
			return fmt.Errorf("layer %d (%s): index says media type %s, manifest says %s", i+1, l.Digest, il.MediaType, l.MediaType)
		}
	}
	return nil
}
