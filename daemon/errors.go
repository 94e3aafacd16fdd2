package daemon

import (
	"net/http"

	"github.com/clipd/clipd/api"
)

func apiErr(status int, code, format string, args ...any) *api.Error {
	return api.Errorf(status, code, format, args...)
}

func badRequest(format string, args ...any) *api.Error {
	return apiErr(http.StatusBadRequest, api.CodeBadRequest, format, args...)
}

func forbidden(format string, args ...any) *api.Error {
	return apiErr(http.StatusForbidden, api.CodeForbidden, format, args...)
}

func notFound(format string, args ...any) *api.Error {
	return apiErr(http.StatusNotFound, api.CodeNotFound, format, args...)
}

func conflict(format string, args ...any) *api.Error {
	return apiErr(http.StatusConflict, api.CodeConflict, format, args...)
}
