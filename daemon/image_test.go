package daemon

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/clipd/clipd/api"
)

// Mount requests by reference that fail before any registry is asked.
func TestCreateImageErrors(t *testing.T) {
	h := newHarness(t).start()
	q := func(s string) string { return `"` + s + `"` }
	mp := q(h.mp("i"))
	cases := []struct {
		name, body string
		status     int
		code, msg  string
	}{
		{"neither", `{"mountpoint":` + mp + `}`, 400, api.CodeBadRequest, `"archive" or "image"`},
		{"both", `{"archive":` + q(h.archive) + `,"image":"127.0.0.1:1/a:b","mountpoint":` + mp + `}`, 400, api.CodeBadRequest, "not both"},
		{"bad reference", `{"image":"127.0.0.1:1/A:::b","mountpoint":` + mp + `}`, 400, api.CodeBadReference, "could not parse"},
		{"layout", `{"image":"oci-layout:/etc","mountpoint":` + mp + `}`, 400, api.CodeBadReference, "only registry references"},
		{"bad platform", `{"image":"127.0.0.1:1/a:b","platform":"///","mountpoint":` + mp + `}`, 400, api.CodeBadRequest, "platform"},
		{"unreachable", `{"image":"127.0.0.1:1/a:b","mountpoint":` + mp + `}`, 502, api.CodeRegistryUnavailable, "registry 127.0.0.1:1 is unreachable"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			status, ae := rawCreate(t, h.client, strings.NewReader(c.body))
			if status != c.status || ae.Code != c.code || !strings.Contains(ae.Message, c.msg) {
				t.Errorf("got %d %s %q; want %d %s containing %q", status, ae.Code, ae.Message, c.status, c.code, c.msg)
			}
		})
	}
	h.fm.mu.Lock()
	n := len(h.fm.reqs)
	h.fm.mu.Unlock()
	if n != 0 {
		t.Errorf("the mounter was asked %d times", n)
	}
}

func TestRequestCredentials(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "/v1/mounts", nil)
	r.Header.Set(api.RegistryAuthHeader, "eyJ1c2VybmFtZSI6InUiLCJwYXNzd29yZCI6InAifQ==") // {"username":"u","password":"p"}
	c, err := requestCredentials(r, api.CreateMount{})
	if err != nil || c.Username != "u" || c.Password != "p" {
		t.Fatalf("header: %+v %v", c, err)
	}
	if _, err := requestCredentials(r, api.CreateMount{Auth: &api.RegistryAuth{Username: "x"}}); err == nil {
		t.Error("header and body credentials together accepted")
	}
	r.Header.Set(api.RegistryAuthHeader, "not base64 at all!")
	if _, err := requestCredentials(r, api.CreateMount{}); err == nil || strings.Contains(err.Error(), "not base64 at all") {
		t.Errorf("bad header: %v", err)
	}
	r.Header.Del(api.RegistryAuthHeader)
	c, err = requestCredentials(r, api.CreateMount{Auth: &api.RegistryAuth{IdentityToken: "tok"}})
	if err != nil || c.IdentityToken != "tok" {
		t.Errorf("body: %+v %v", c, err)
	}
}
