package daemon

import (
	"fmt"
	"net/http"
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
)

// APIError is an error answer of the API: the server sends it, the client
// returns it.
type APIError struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *APIError) Error() string { return e.Message }

func apiErr(status int, code, format string, args ...any) *APIError {
	return &APIError{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

func badRequest(format string, args ...any) *APIError {
	return apiErr(http.StatusBadRequest, CodeBadRequest, format, args...)
}

func forbidden(format string, args ...any) *APIError {
	return apiErr(http.StatusForbidden, CodeForbidden, format, args...)
}

func notFound(format string, args ...any) *APIError {
	return apiErr(http.StatusNotFound, CodeNotFound, format, args...)
}

func conflict(format string, args ...any) *APIError {
	return apiErr(http.StatusConflict, CodeConflict, format, args...)
}
