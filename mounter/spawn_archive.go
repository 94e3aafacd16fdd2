package mounter

import (
	"os"
	"os/exec"
	"strconv"
)

// passArchive hands the archive the daemon opened with the requesting
// peer's rights to the serving process as an inherited descriptor
// (--archive-fd): the serving process never opens the path itself, so it
// reads what the peer could read, even if the path changes meanwhile. It
// appends to cmd.ExtraFiles, whatever other descriptors are passed there,
// and keeps the file open for its whole life: after a daemon restart the
// adopted process still has it.
func passArchive(cmd *exec.Cmd, f *os.File) {
	if f == nil {
		return
	}
	fd := 3 + len(cmd.ExtraFiles) // ExtraFiles[i] becomes descriptor 3+i
	cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	cmd.Args = append(cmd.Args, "--archive-fd", strconv.Itoa(fd))
}
