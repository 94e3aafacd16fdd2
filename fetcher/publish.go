package fetcher

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/clipd/clipd/index"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The index artifact: an OCI 1.1 artifact manifest in the image's
// repository whose subject is the indexed platform manifest. A node fetches
// its first layer before a mount is ready, so that layer is kept small: the
// .clip without its checkpoint windows, zstd-compressed
// (index.ClipZstdMediaType; decompressed, a file clip's ExtractMetadata
// reads), and the windows follow as a second layer (index.WindowsMediaType)
// that mounts read by range, a window with the span that needs it. An
// index whose windows are inline is published as one layer, the .clip byte
// for byte (IndexLayerMediaType).
const (
	// IndexArtifactType is the manifest's artifactType (and what the
	// referrers listing is filtered by).
	IndexArtifactType = "application/vnd.clipd.index.v1"
	// IndexLayerMediaType is the media type of the .clip layer.
	IndexLayerMediaType = "application/vnd.clipd.index.v1+clip"
	// emptyConfigMediaType is OCI 1.1's empty descriptor for artifacts
	// without a config.
	emptyConfigMediaType = "application/vnd.oci.empty.v1+json"

	// AnnotationFormat is the clipd extension version of the .clip file.
	AnnotationFormat = "dev.clipd.index.format"
	// AnnotationManifest is the digest of the platform manifest indexed
	// (also the subject's digest).
	AnnotationManifest = "dev.clipd.index.manifest"
	// AnnotationSpanSize is the index's span size in bytes.
	AnnotationSpanSize = "dev.clipd.index.span-size"
	// annotationTitle names the layer when an artifact tool saves it.
	annotationTitle = "org.opencontainers.image.title"
)

// IndexAnnotations are the annotations PublishIndex writes.
func IndexAnnotations(format int, manifest string, spanSize int64) map[string]string {
	return map[string]string{
		AnnotationFormat:   strconv.Itoa(format),
		AnnotationManifest: manifest,
		AnnotationSpanSize: strconv.FormatInt(spanSize, 10),
	}
}

// rawManifest is a manifest PublishIndex writes as is: remote.Put reads its
// subject and keeps the sha256-<hex> fallback tag on registries without the
// referrers API.
type rawManifest struct {
	b  []byte
	mt types.MediaType
}

func (r rawManifest) RawManifest() ([]byte, error)        { return r.b, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return r.mt, nil }

// PublishIndex stores clip (a .clip file) in repo as an index artifact
// whose subject is the platform manifest subject, and returns the
// artifact manifest's digest and the size of the layer a node fetches up
// front. windows is the checkpoint windows blob the .clip refers to (nil
// when its windows are inline). Publishing the same bytes again is a no-op
// for the registry (same digests).
func PublishIndex(ctx context.Context, repo name.Repository, subject v1.Descriptor, clip, windows []byte, annotations map[string]string, opts Options) (v1.Hash, int64, error) {
	fail := func(err error) (v1.Hash, int64, error) {
		return v1.Hash{}, 0, fmt.Errorf("publish index for %s@%s: %w", repo, subject.Digest, err)
	}
	// Writes go to the registry itself: a mirror answering the existence
	// checks (HEAD) of a push could make it skip blobs the registry lacks.
	opts.Hosts = nil
	ropts := remoteOptions(ctx, opts)
	first, mt, title := clip, types.MediaType(IndexLayerMediaType), "index.clip"
	if windows != nil {
		var z bytes.Buffer
		if err := index.CompressClip(&z, bytes.NewReader(clip)); err != nil {
			return fail(err)
		}
		first, mt, title = z.Bytes(), types.MediaType(index.ClipZstdMediaType), "index.clip.zst"
	}
	layers := []v1.Layer{static.NewLayer(first, mt)}
	descs := []v1.Descriptor{{MediaType: mt, Size: int64(len(first)), Annotations: map[string]string{annotationTitle: title}}}
	if windows != nil {
		layers = append(layers, static.NewLayer(windows, index.WindowsMediaType))
		descs = append(descs, v1.Descriptor{MediaType: index.WindowsMediaType, Size: int64(len(windows)),
			Annotations: map[string]string{annotationTitle: "index.clip.windows"}})
	}
	h, err := publishArtifact(ctx, repo, subject, IndexArtifactType, layers, descs, annotations, ropts)
	if err != nil {
		return fail(err)
	}
	return h, int64(len(first)), nil
}

// publishArtifact uploads layers (described by descs, whose digests it
// fills in) and the empty config, then puts an artifact manifest of
// artifactType with annotations whose subject is subject, and returns the
// manifest's digest. The manifest is written as is (not through mutate,
// whose Annotations drops a subject set before it: DESIGN.md), so the
// subject is there and remote.Put keeps the fallback tag.
func publishArtifact(ctx context.Context, repo name.Repository, subject v1.Descriptor, artifactType string,
	layers []v1.Layer, descs []v1.Descriptor, annotations map[string]string, ropts []remote.Option) (v1.Hash, error) {
	empty := []byte("{}")
	config := static.NewLayer(empty, emptyConfigMediaType)
	for i, l := range append([]v1.Layer{config}, layers...) {
		if err := remote.WriteLayer(repo, l, ropts...); err != nil {
			return v1.Hash{}, fmt.Errorf("upload blob: %w", err)
		}
		if i > 0 {
			descs[i-1].Digest, _ = l.Digest()
		}
	}
	cd, _ := config.Digest()
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  artifactType,
		Config:        v1.Descriptor{MediaType: emptyConfigMediaType, Digest: cd, Size: int64(len(empty)), Data: empty},
		Layers:        descs,
		Annotations:   annotations,
		// The subject descriptor carries only what the spec asks for.
		Subject: &v1.Descriptor{MediaType: subject.MediaType, Digest: subject.Digest, Size: subject.Size},
	}
	b, err := json.Marshal(m)
	if err != nil {
		return v1.Hash{}, err
	}
	h, _, err := v1.SHA256(bytes.NewReader(b))
	if err != nil {
		return v1.Hash{}, err
	}
	if err := remote.Put(repo.Digest(h.String()), rawManifest{b, types.OCIManifestSchema1}, ropts...); err != nil {
		return v1.Hash{}, fmt.Errorf("put artifact manifest: %w", err)
	}
	return h, nil
}

// SubjectOf describes img's manifest as a subject descriptor.
func SubjectOf(img v1.Image) (v1.Descriptor, error) {
	raw, err := img.RawManifest()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("read manifest: %w", err)
	}
	mt, err := img.MediaType()
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("manifest media type: %w", err)
	}
	h, n, err := v1.SHA256(bytes.NewReader(raw))
	if err != nil {
		return v1.Descriptor{}, err
	}
	return v1.Descriptor{MediaType: mt, Digest: h, Size: n}, nil
}

// CopyImage writes img to ref: only the blobs ref's repository lacks are
// uploaded, byte for byte, and the manifest keeps its digest (remote.Write
// puts the image's raw manifest).
func CopyImage(ctx context.Context, img v1.Image, ref name.Reference, opts Options) error {
	opts.Hosts = nil // writes go to the registry itself, as in PublishIndex
	if err := remote.Write(ref, img, remoteOptions(ctx, opts)...); err != nil {
		return fmt.Errorf("copy image to %s: %w", ref, err)
	}
	return nil
}

func remoteOptions(ctx context.Context, opts Options) []remote.Option {
	ro := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(opts.keychain())}
	if opts.Transport != nil || opts.Hosts != nil {
		ro = append(ro, remote.WithTransport(opts.transport()))
	}
	return ro
}
