package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// procTitle holds the command line set by setProcTitle: the kernel reads
// /proc/PID/cmdline from this memory for the rest of the process's life,
// so it must stay referenced (Go's collector does not move it).
//
//lint:ignore U1000 never read in Go: it keeps the kernel's argument area alive
var procTitle []byte

// prctlMMMap is the kernel's struct prctl_mm_map (PR_SET_MM_MAP).
type prctlMMMap struct {
	StartCode, EndCode, StartData, EndData, StartBrk, Brk, StartStack,
	ArgStart, ArgEnd, EnvStart, EnvEnd uint64
	Auxv     uint64
	AuxvSize uint32
	ExeFD    uint32
}

// setProcTitle makes /proc/self/cmdline (what ps and admins see) read
// args: a spare serving process that took a request then shows the same
// command line as one started for that mount (--id, --mountpoint, ...).
// PR_SET_MM_MAP (the kernel's checkpoint/restore interface) needs no
// capability to change the argument area alone; where it is missing
// (kernels without CONFIG_CHECKPOINT_RESTORE) PR_SET_MM_ARG_START/END need
// CAP_SYS_RESOURCE. Failing both, the spare's own command line stays,
// which changes nothing else.
func setProcTitle(args []string) error {
	b := []byte(strings.Join(args, "\x00") + "\x00")
	start := uint64(uintptr(unsafe.Pointer(&b[0])))
	end := start + uint64(len(b))
	errMap := setArgsMap(start, end)
	if errMap == nil {
		procTitle = b
		return nil
	}
	// The kernel checks start < end after each change: set the one that
	// keeps it true first.
	first, second := [2]uint64{unix.PR_SET_MM_ARG_START, start}, [2]uint64{unix.PR_SET_MM_ARG_END, end}
	if err := unix.Prctl(unix.PR_SET_MM, uintptr(first[0]), uintptr(first[1]), 0, 0); err != nil {
		first, second = second, first
		if err := unix.Prctl(unix.PR_SET_MM, uintptr(first[0]), uintptr(first[1]), 0, 0); err != nil {
			return errors.Join(errMap, fmt.Errorf("PR_SET_MM_ARG_*: %w", err))
		}
	}
	if err := unix.Prctl(unix.PR_SET_MM, uintptr(second[0]), uintptr(second[1]), 0, 0); err != nil {
		return errors.Join(errMap, fmt.Errorf("PR_SET_MM_ARG_*: %w", err))
	}
	procTitle = b
	return nil
}

// setArgsMap sets the argument area with PR_SET_MM_MAP, every other field
// as it is (from /proc/self/stat and brk).
func setArgsMap(argStart, argEnd uint64) error {
	st, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return fmt.Errorf("PR_SET_MM_MAP: %w", err)
	}
	i := strings.LastIndexByte(string(st), ')')
	if i < 0 {
		return errors.New("PR_SET_MM_MAP: unreadable /proc/self/stat")
	}
	f := strings.Fields(string(st[i+1:])) // f[0] is field 3
	field := func(n int) uint64 {
		if n-3 >= len(f) {
			return 0
		}
		v, _ := strconv.ParseUint(f[n-3], 10, 64)
		return v
	}
	brk, _, _ := unix.RawSyscall(unix.SYS_BRK, 0, 0, 0)
	m := prctlMMMap{
		StartCode: field(26), EndCode: field(27), StartStack: field(28),
		StartData: field(45), EndData: field(46), StartBrk: field(47), Brk: uint64(brk),
		ArgStart: argStart, ArgEnd: argEnd, EnvStart: field(50), EnvEnd: field(51),
		ExeFD: ^uint32(0), // unchanged
	}
	if m.EnvEnd == 0 || m.StartCode == 0 {
		return errors.New("PR_SET_MM_MAP: /proc/self/stat lacks the memory layout")
	}
	if err := unix.Prctl(unix.PR_SET_MM, unix.PR_SET_MM_MAP, uintptr(unsafe.Pointer(&m)), unsafe.Sizeof(m), 0); err != nil {
		return fmt.Errorf("PR_SET_MM_MAP: %w", err)
	}
	return nil
}
