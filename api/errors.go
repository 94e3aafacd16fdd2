package api

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Error codes of the API, stable for scripts.
const (
	CodeBadRequest   = "bad_request"
	CodeTooLarge     = "request_too_large"
	CodeForbidden    = "forbidden"
	CodeNotFound     = "not_found"
	CodeMethod       = "method_not_allowed"
	CodeConflict     = "conflict"
	CodeNotSupported = "not_supported"
	CodeMountFailed  = "mount_failed"
	CodeBadArchive   = "invalid_archive"
	CodeInternal     = "internal"
	// CodeBusy: a serving process refused a graceful unmount because the
	// filesystem is in use (control socket only).
	CodeBusy = "busy"
	// CodeArchiveUnavailable answers a non-root peer whose archive cannot be
	// opened with its own rights, whether it is missing or unreadable: the
	// daemon runs as root and must not tell a peer what it could not find out
	// itself.
	CodeArchiveUnavailable = "archive_unavailable"
)

// Error is an error answer: the server sends it in the envelope, the client
// returns it with the status it came with.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Errorf returns an error answer with a formatted message.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// errorBody is the envelope of every error answer.
type errorBody struct {
	Error Error `json:"error"`
}

// WriteError answers with e in the error envelope.
func WriteError(w http.ResponseWriter, e *Error) {
	WriteJSON(w, e.Status, errorBody{Error: *e})
}

// maxErrorBody bounds how much of an error answer a client reads.
const maxErrorBody = 64 * 1024

// DecodeError turns an error answer into an *Error; an answer that is not
// the envelope still gives its status and text (code CodeInternal).
func DecodeError(resp *http.Response) *Error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var eb errorBody
	if err := json.Unmarshal(b, &eb); err == nil && eb.Error.Message != "" {
		eb.Error.Status = resp.StatusCode
		return &eb.Error
	}
	msg := strings.TrimSpace(string(b))
	if msg == "" {
		msg = resp.Status
	}
	return &Error{Status: resp.StatusCode, Code: CodeInternal, Message: msg}
}
