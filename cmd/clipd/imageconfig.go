package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/clipd/clipd/index"
)

// describeImageConfig prints what a runtime takes from the image's config
// (what `--bundle` writes into config.json), after index.Describe's summary.
func describeImageConfig(w io.Writer, im *index.ImageInfo) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if im == nil {
		fmt.Fprintf(tw, "image config:\tnot recorded\n")
		return tw.Flush()
	}
	fmt.Fprintf(tw, "image config:\n")
	fmt.Fprintf(tw, "  entrypoint:\t%s\n", quoteArgs(im.Entrypoint))
	fmt.Fprintf(tw, "  cmd:\t%s\n", quoteArgs(im.Cmd))
	user := im.User
	if user == "" {
		user = "(root)"
	}
	fmt.Fprintf(tw, "  user:\t%s\n", user)
	wd := im.WorkingDir
	if wd == "" {
		wd = "/"
	}
	fmt.Fprintf(tw, "  working dir:\t%s\n", wd)
	if len(im.Env) == 0 {
		fmt.Fprintf(tw, "  env:\t(none)\n")
	}
	for i, kv := range im.Env {
		label := ""
		if i == 0 {
			label = "  env:"
		}
		fmt.Fprintf(tw, "%s\t%s\n", label, strconv.Quote(kv))
	}
	return tw.Flush()
}

// quoteArgs prints an argument vector as JSON-like quoted words.
func quoteArgs(args []string) string {
	if len(args) == 0 {
		return "(none)"
	}
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = strconv.Quote(a)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
