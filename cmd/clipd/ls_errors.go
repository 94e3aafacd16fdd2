package main

import (
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/clipd/clipd/api"
)

// lastErrorWidth bounds the LAST ERROR cell; `clipd ls --json` and GET
// /v1/mounts/ID have the whole message.
const lastErrorWidth = 100

// lastError is the LAST ERROR cell of `clipd ls`: how long ago the latest
// read error happened and its cause, or "-". It is the last column, so
// spaces may stay; what could hide in a terminal is quoted as in cell.
func lastError(st api.MountStats, now time.Time) string {
	if st.LastErrorTime.IsZero() {
		return "-"
	}
	msg := st.LastError
	if !utf8.ValidString(msg) || strings.IndexFunc(msg, func(r rune) bool { return r != ' ' && !unicode.IsPrint(r) }) >= 0 {
		msg = strconv.Quote(msg)
	}
	if r := []rune(msg); len(r) > lastErrorWidth {
		msg = string(r[:lastErrorWidth-1]) + "…"
	}
	return now.Sub(st.LastErrorTime).Round(time.Second).String() + " ago: " + msg
}
