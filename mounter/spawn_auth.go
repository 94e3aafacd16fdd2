package mounter

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"

	"github.com/clipd/clipd/fetcher"
)

// passCredentials hands a mount's registry credentials to its serving
// process through a pipe (--auth-fd): they never appear in its arguments,
// environment or any file, and the process reads them once into memory.
// The returned file is the pipe's read end, to close once the process has
// started.
func passCredentials(cmd *exec.Cmd, c *fetcher.Credentials) (*os.File, error) {
	rd, err := credentialsPipe(c)
	if rd == nil || err != nil {
		return nil, err
	}
	fd := 3 + len(cmd.ExtraFiles)
	cmd.ExtraFiles = append(cmd.ExtraFiles, rd)
	cmd.Args = append(cmd.Args, "--auth-fd", strconv.Itoa(fd))
	return rd, nil
}

// credentialsPipe writes c into a pipe and returns its read end; nil for
// nil c.
func credentialsPipe(c *fetcher.Credentials) (*os.File, error) {
	if c == nil {
		return nil, nil
	}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("pass credentials: %w", err)
	}
	rd, wr, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("pass credentials: %w", err)
	}
	// A few hundred bytes: the pipe's buffer holds them without a reader.
	_, err = wr.Write(b)
	wr.Close()
	if err != nil {
		rd.Close()
		return nil, fmt.Errorf("pass credentials: %w", err)
	}
	return rd, nil
}

// ReadCredentials reads what passCredentials wrote, from the descriptor fd.
func ReadCredentials(fd int) (fetcher.Credentials, error) {
	f := os.NewFile(uintptr(fd), "credentials")
	defer f.Close()
	var c fetcher.Credentials
	if err := json.NewDecoder(f).Decode(&c); err != nil {
		return fetcher.Credentials{}, fmt.Errorf("read credentials from descriptor %d: not the JSON the daemon writes", fd)
	}
	return c, nil
}
