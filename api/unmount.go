package api

import (
	"context"
	"net/http"
	"net/url"
)

// UnmountOptions are the query options of DELETE /v1/mounts/{id}.
type UnmountOptions struct {
	Force     bool // detach a busy mount lazily
	KeepUpper bool // writable mounts: keep the upper directory
}

// UnmountWith removes a mount with options.
func (c *Client) UnmountWith(ctx context.Context, id string, o UnmountOptions) (*MountInfo, error) {
	q := url.Values{}
	if o.Force {
		q.Set("force", "true")
	}
	if o.KeepUpper {
		q.Set("keep_upper", "true")
	}
	p := "/v1/mounts/" + url.PathEscape(id)
	if len(q) > 0 {
		p += "?" + q.Encode()
	}
	var mi MountInfo
	if err := c.Do(ctx, http.MethodDelete, p, nil, &mi); err != nil {
		return nil, err
	}
	return &mi, nil
}
