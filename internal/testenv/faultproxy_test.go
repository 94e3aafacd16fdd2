package testenv

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestFaultProxy drives each fault against a plain HTTP backend that
// serves ranges like a registry.
func TestFaultProxy(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "blob", time.Time{}, bytes.NewReader(data))
	}))
	defer backend.Close()
	p := StartFaultProxy(t, strings.TrimPrefix(backend.URL, "http://"))
	get := func(ctx context.Context, path, rng string) (*http.Response, []byte, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.Addr+path, nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp, b, err
	}

	// pass, with a range
	resp, b, err := get(t.Context(), "/v2/x/blobs/a", "bytes=100-199")
	if err != nil || resp.StatusCode != http.StatusPartialContent || !bytes.Equal(b, data[100:200]) {
		t.Fatalf("pass: %v %v %d bytes", err, resp, len(b))
	}
	if p.Bytes() != 100 || p.BytesTo("/blobs/a") != 100 || p.Requests("/blobs/a")[0].Range != "bytes=100-199" {
		t.Fatalf("pass: counted %d bytes, %+v", p.Bytes(), p.Requests(""))
	}

	// stall: no answer until the client gives up; other paths pass.
	p.SetFault("/blobs/a", Stall())
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	_, _, err = get(ctx, "/v2/x/blobs/a", "")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || p.Stalled() != 1 {
		t.Fatalf("stall: %v, %d stalled", err, p.Stalled())
	}
	if _, b, err := get(t.Context(), "/v2/x/blobs/b", ""); err != nil || len(b) != len(data) {
		t.Fatalf("other path during a stall: %v %d", err, len(b))
	}

	// statuses, with Retry-After
	for _, code := range []int{401, 404, 429, 503} {
		p.SetFault("/blobs/a", Fault{Status: code, RetryAfter: 2})
		resp, _, err := get(t.Context(), "/v2/x/blobs/a", "")
		if err != nil || resp.StatusCode != code || resp.Header.Get("Retry-After") != "2" {
			t.Fatalf("status %d: %v %v", code, err, resp)
		}
	}

	// reset mid-body
	p.SetFault("/blobs/a", Reset(1000))
	_, b, err = get(t.Context(), "/v2/x/blobs/a", "")
	if !errors.Is(err, io.ErrUnexpectedEOF) || len(b) != 1000 {
		t.Fatalf("reset: %v after %d bytes", err, len(b))
	}

	// wrong bytes
	p.SetFault("/blobs/a", WrongBytes())
	_, b, err = get(t.Context(), "/v2/x/blobs/a", "")
	if err != nil || len(b) != len(data) || bytes.Equal(b, data) || !bytes.Equal(b[1:], data[1:]) {
		t.Fatalf("wrong bytes: %v, %d bytes, first %q", err, len(b), b[:1])
	}

	// trickle: 4000 bytes at 8000 B/s take about half a second.
	p.SetFault("/blobs/a", Trickle(8000))
	start := time.Now()
	_, b, err = get(t.Context(), "/v2/x/blobs/a", "bytes=0-3999")
	if took := time.Since(start); err != nil || !bytes.Equal(b, data[:4000]) || took < 400*time.Millisecond {
		t.Fatalf("trickle: %v, %d bytes in %s", err, len(b), took)
	}

	// The handler ends a little after the client has its bytes.
	for deadline := time.Now().Add(5 * time.Second); len(p.Requests("")) < 10; {
		if time.Now().After(deadline) {
			t.Fatalf("the trickled request never ended: %+v", p.Requests(""))
		}
		time.Sleep(10 * time.Millisecond)
	}

	// cleared: everything passes again
	p.Clear()
	p.ResetCounts()
	if _, b, err := get(t.Context(), "/v2/x/blobs/a", ""); err != nil || !bytes.Equal(b, data) || p.Bytes() != int64(len(data)) {
		t.Fatalf("after Clear: %v %d bytes, counted %d: %+v", err, len(b), p.Bytes(), p.Requests(""))
	}
}
