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

// FindIndexes lists the index artifacts attached to manifest in repo
// (referrers API, or the sha256-<hex> tag schema on registries without it),
// newest listed last as registries append them. An image without any gives
// an empty list, not an error.
func FindIndexes(ctx context.Context, repo name.Repository, manifest v1.Hash, opts Options) ([]IndexArtifact, error) {
	// No artifactType filter: some registries list an artifact under its
	// config media type (the empty one) instead of the manifest's
	// artifactType; the manifest itself decides (readArtifactManifest).
	idx, err := remote.Referrers(repo.Digest(manifest.String()), remoteOptions(ctx, opts)...)
	if err != nil {
		return nil, fmt.Errorf("list index artifacts of %s@%s: %s: %w", repo, manifest, describeRegistryErr(err), err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("list index artifacts of %s@%s: %w", repo, manifest, err)
	}
	var out []IndexArtifact
	for _, d := range im.Manifests {
		switch d.ArtifactType {
		case IndexArtifactType, emptyConfigMediaType, "":
		default:
			continue
		}
		a, err := readArtifactManifest(ctx, repo, d.Digest, opts)
		if err != nil {
			return nil, err
		}
		if a != nil {
			out = append(out, *a)
		}
	}
	return out, nil
}

// readArtifactManifest reads an index artifact's manifest; nil when it is
// not one (wrong layer count or media type).
func readArtifactManifest(ctx context.Context, repo name.Repository, d v1.Hash, opts Options) (*IndexArtifact, error) {
	desc, err := remote.Get(repo.Digest(d.String()), remoteOptions(ctx, opts)...)
	if err != nil {
		return nil, fmt.Errorf("read index artifact %s@%s: %s: %w", repo, d, describeRegistryErr(err), err)
	}
	if len(desc.Manifest) > maxArtifactManifest {
		return nil, fmt.Errorf("read index artifact %s@%s: manifest of %d bytes", repo, d, len(desc.Manifest))
	}
	var m v1.Manifest
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		return nil, fmt.Errorf("read index artifact %s@%s: %w", repo, d, err)
	}
	if m.ArtifactType != IndexArtifactType {
		return nil, nil
	}
	switch {
	case len(m.Layers) == 1 && m.Layers[0].MediaType == IndexLayerMediaType:
		return &IndexArtifact{Manifest: d, Layer: m.Layers[0], Annotations: m.Annotations}, nil
	case len(m.Layers) == 2 && m.Layers[0].MediaType == index.ClipZstdMediaType && m.Layers[1].MediaType == index.WindowsMediaType:
		return &IndexArtifact{Manifest: d, Layer: m.Layers[0], Windows: &m.Layers[1], Annotations: m.Annotations}, nil
	}
	return nil, nil
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
