package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"time"
)

// Error codes of prefetch profiles.
const (
	// CodeProfileNotFound: no prefetch profile is stored for the image (404).
	CodeProfileNotFound = "profile_not_found"
	// CodeBadProfile: the stored profile cannot be read (422); mounts
	// ignore it and the next recording replaces it.
	CodeBadProfile = "invalid_profile"
)

// ProfileSummary is one stored prefetch profile (GET /v1/profiles), as
// package profile lists it.
type ProfileSummary struct {
	// Image is the profile's key: the image's manifest digest, or the
	// digest of the .clip file for an archive that names none.
	Image      string    `json:"image"`
	Layers     int       `json:"layers"`
	Spans      int       `json:"spans"`
	Recordings int       `json:"recordings"`
	Updated    time.Time `json:"updated"`
	Size       int64     `json:"size"`
	// Error says why the stored file cannot be used (it is then ignored
	// by mounts and replaced by the next recording).
	Error string `json:"error,omitempty"`
}

// Profiles lists the stored prefetch profiles.
func (c *Client) Profiles(ctx context.Context) ([]ProfileSummary, error) {
	var out []ProfileSummary
	if err := c.Do(ctx, http.MethodGet, "/v1/profiles", nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// Profile returns the prefetch profile of image (a sha256 digest) as the
// daemon stores it (JSON, package profile's format).
func (c *Client) Profile(ctx context.Context, image string) (json.RawMessage, error) {
	var out json.RawMessage
	if err := c.Do(ctx, http.MethodGet, "/v1/profiles/"+url.PathEscape(image), nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// RemoveProfile deletes the prefetch profile of image.
func (c *Client) RemoveProfile(ctx context.Context, image string) error {
	return c.Do(ctx, http.MethodDelete, "/v1/profiles/"+url.PathEscape(image), nil, nil)
}
