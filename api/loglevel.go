package api

import (
	"fmt"
	"log/slog"
)

// ParseLogLevel maps a log level name (debug, info, warn, error) to a slog
// level: the names of the config's daemon.log_level and of a serving
// process's PUT /v1/log-level.
func ParseLogLevel(s string) (slog.Level, error) {
	switch s {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("invalid log level %q (want debug, info, warn or error)", s)
}
