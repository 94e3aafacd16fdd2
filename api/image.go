package api

import "time"

// RegistryAuth are per-request registry credentials, as Docker's engine API
// carries them in X-Registry-Auth (base64url of this JSON): a user name and
// password, or an identity token. Never logged, stored or echoed.
type RegistryAuth struct {
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	IdentityToken string `json:"identitytoken,omitempty"`
}

// String hides the secret.
func (a RegistryAuth) String() string { return "registry credentials" }

// GoString hides the secret from %#v.
func (a RegistryAuth) GoString() string { return a.String() }

// RegistryAuthHeader carries per-request credentials (Docker's engine API).
const RegistryAuthHeader = "X-Registry-Auth"

// Error codes of mounts by image reference.
const (
	// CodeBadReference: the image reference does not parse.
	CodeBadReference = "bad_reference"
	// CodeImageNotFound: no such repository, tag or digest (404).
	CodeImageNotFound = "image_not_found"
	// CodePlatformNotFound: the image has no manifest for the platform.
	CodePlatformNotFound = "platform_not_found"
	// CodeRegistryUnauthorized: the registry refused the credentials, or
	// wanted some (401 or 403).
	CodeRegistryUnauthorized = "registry_unauthorized"
	// CodeRegistryUnavailable: the registry could not be reached or failed
	// (502).
	CodeRegistryUnavailable = "registry_unavailable"
	// CodeIndexMismatch: the index found in the registry was not built for
	// the resolved manifest or its layers (422).
	CodeIndexMismatch = "index_mismatch"
	// CodeIndexNotFound: no index in the store or the registry, and
	// index.build_missing is off (404).
	CodeIndexNotFound = "index_not_found"
)

// PullImage is the body of POST /v1/images: stage an image's index in the
// node's store ahead of a mount.
type PullImage struct {
	Image    string        `json:"image"`
	Platform string        `json:"platform,omitempty"`
	Auth     *RegistryAuth `json:"auth,omitempty"`
}

// StoredIndex is one index of the node's store (GET /v1/images, and the
// answer of POST /v1/images).
type StoredIndex struct {
	ManifestDigest string    `json:"manifest_digest"`
	Image          string    `json:"image"`
	IndexSource    string    `json:"index_source"`
	Size           int64     `json:"size"`
	Used           time.Time `json:"used"`
	// Mounts are the ids of the mounts serving this index.
	Mounts []string `json:"mounts"`
}
