package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"

	"github.com/clipd/clipd/api"
)

// Exit statuses, listed in `clipd help` for scripts.
const (
	exitOK          = 0
	exitFailure     = 1 // anything not below
	exitUsage       = 2 // bad command line: unknown command or flag, wrong arguments
	exitUnreachable = 3 // the daemon does not answer on its socket, or is shutting down
	exitNotFound    = 4 // no such mount, archive or file
	exitConflict    = 5 // busy or conflicting: mountpoint in use, mount busy
	exitForbidden   = 6 // the daemon refused the caller (uid/gid, mount roots), or a file or the socket did
)

const exitCodesHelp = `Exit status:
  0  success
  1  failure not listed below
  2  usage error (unknown command or flag, wrong arguments)
  3  daemon unreachable (nothing answers on the socket, or it is shutting down)
  4  not found (no such mount, archive or file)
  5  conflict or busy (mountpoint in use, mount busy)
  6  permission denied (by the daemon, its socket or a file)
`

// usageError is a bad command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// exitError carries an exit status chosen where the failure is understood.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// daemonErr classifies an error of a call to the daemon: a connection that
// failed is "unreachable" (or "permission denied" for the socket's mode),
// not a failure of the request.
func daemonErr(err error) error {
	var op *net.OpError
	if err == nil || !errors.As(err, &op) || op.Op != "dial" {
		return err
	}
	if errors.Is(err, os.ErrPermission) {
		return &exitError{code: exitForbidden, err: err}
	}
	return &exitError{code: exitUnreachable, err: err}
}

// exitCode maps an error of a command to the process's exit status.
func exitCode(err error) int {
	var ue *usageError
	var ee *exitError
	var ae *api.Error
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		return exitUsage
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ae):
		switch ae.Status {
		case http.StatusNotFound:
			return exitNotFound
		case http.StatusConflict:
			return exitConflict
		case http.StatusForbidden:
			return exitForbidden
		case http.StatusServiceUnavailable:
			return exitUnreachable
		}
	case errors.Is(err, os.ErrNotExist):
		return exitNotFound
	case errors.Is(err, os.ErrPermission):
		return exitForbidden
	}
	return exitFailure
}
