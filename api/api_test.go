package api

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestMountStatsAddEveryField: Add sums every counter, so that a figure
// added to MountStats cannot be left out of the host totals; the last
// error is the later of the two.
func TestMountStatsAddEveryField(t *testing.T) {
	var a, b MountStats
	va, vb := reflect.ValueOf(&a).Elem(), reflect.ValueOf(&b).Elem()
	for i := range va.NumField() {
		if va.Field(i).Kind() == reflect.Int64 {
			va.Field(i).SetInt(int64(i + 1))
			vb.Field(i).SetInt(int64(100 * (i + 1)))
		}
	}
	a.LastError, a.LastErrorTime = "older", time.Unix(100, 0)
	b.LastError, b.LastErrorTime = "newer", time.Unix(200, 0)
	sum := reflect.ValueOf(a.Add(b))
	for i := range sum.NumField() {
		f := sum.Type().Field(i)
		switch {
		case f.Type.Kind() == reflect.Int64:
			if got, want := sum.Field(i).Int(), int64(101*(i+1)); got != want {
				t.Errorf("Add: %s = %d, want %d", f.Name, got, want)
			}
		case f.Name != "LastError" && f.Name != "LastErrorTime":
			t.Errorf("Add: field %s (%s) is neither a counter nor the last error: extend Add and this test", f.Name, f.Type)
		}
	}
	if s := a.Add(b); s.LastError != "newer" || !s.LastErrorTime.Equal(b.LastErrorTime) {
		t.Errorf("Add kept the older error: %q at %v", s.LastError, s.LastErrorTime)
	}
	if s := b.Add(a); s.LastError != "newer" {
		t.Errorf("Add kept the older error: %q", s.LastError)
	}
}

// serve answers on a Unix socket with h and returns a Client of it.
func serve(t *testing.T, h http.HandlerFunc) *Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return NewClient(sock)
}

// TestDecodeBodyAndErrorEnvelope: the server helpers refuse what the API
// refuses, in the envelope, and the client returns it as an *Error.
func TestDecodeBodyAndErrorEnvelope(t *testing.T) {
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		var req CreateMount
		if ae := DecodeBody(w, r, 64, &req); ae != nil {
			WriteError(w, ae)
			return
		}
		WriteJSON(w, http.StatusCreated, MountInfo{Archive: req.Archive})
	})
	ctx := context.Background()
	var mi MountInfo
	if err := c.Do(ctx, http.MethodPost, "/", CreateMount{Archive: "/a.clip"}, &mi); err != nil || mi.Archive != "/a.clip" {
		t.Fatalf("good body: %+v %v", mi, err)
	}
	for _, tc := range []struct {
		body   any
		status int
		code   string
		msg    string
	}{
		{map[string]string{"archive": "/a.clip", "color": "red"}, 400, CodeBadRequest, `unknown field "color"`},
		{CreateMount{Archive: strings.Repeat("x", 100)}, 413, CodeTooLarge, "larger than 64 bytes"},
		{nil, 400, CodeBadRequest, "empty request body"},
	} {
		err := c.Do(ctx, http.MethodPost, "/", tc.body, nil)
		var ae *Error
		if !errors.As(err, &ae) || ae.Status != tc.status || ae.Code != tc.code || !strings.Contains(ae.Message, tc.msg) {
			t.Errorf("body %v: %#v, want %d %s %q", tc.body, err, tc.status, tc.code, tc.msg)
		}
	}
}

// TestDecodeErrorOutsideTheEnvelope: an answer that is not the envelope
// still gives its status and text.
func TestDecodeErrorOutsideTheEnvelope(t *testing.T) {
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "gateway fell over", http.StatusBadGateway)
	})
	_, err := c.Health(context.Background())
	var ae *Error
	if !errors.As(err, &ae) || ae.Status != 502 || ae.Code != CodeInternal || ae.Message != "gateway fell over" {
		t.Errorf("plain error answer: %#v", err)
	}
}
