// Package crashtest is the parent half of kill -9 durability tests. The
// test binary re-executes itself as a child that writes durably and prints
// one stdout line per write it got acknowledged; the parent SIGKILLs it
// mid-stream and checks, after reopening, that every acknowledged write
// survived.
//
// In the test:
//
//	if arg, ok := crashtest.Child("STORE"); ok { child(arg); return }
//	lines := crashtest.Kill(t, crashtest.Run{Name: "STORE", Arg: path, Test: "^TestKill9$", Acks: 200})
package crashtest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

const envPrefix = "PALISADE_CRASH_CHILD_"

// Child reports whether this process is a child started by Kill under
// name, and the argument it was given.
func Child(name string) (arg string, ok bool) {
	return os.LookupEnv(envPrefix + name)
}

// Run describes one child run.
type Run struct {
	Name string // as passed to Child
	Arg  string
	// Test is the -test.run pattern that reaches the child's code; empty
	// when TestMain dispatches it.
	Test string
	// Acks is how many acknowledged lines to read before the kill.
	Acks int
	// IsAck picks the lines that count toward Acks; nil counts every line.
	IsAck func(line string) bool
}

// Kill starts the child, SIGKILLs it once r.Acks acknowledgements were
// read, and returns every line it printed, including those written
// between the kill signal and its delivery: they were acknowledged too.
// It fails t if the child stops early or takes over a minute.
func Kill(t testing.TB, r Run) []string {
	t.Helper()
	pattern := r.Test
	if pattern == "" {
		pattern = "^$"
	}
	cmd := exec.Command(os.Args[0], "-test.run="+pattern, "-test.count=1")
	cmd.Env = append(os.Environ(), envPrefix+r.Name+"="+r.Arg)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	timeout := time.AfterFunc(time.Minute, func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	defer timeout.Stop()
	var lines []string
	acks := 0
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if r.IsAck != nil && !r.IsAck(sc.Text()) {
			continue
		}
		if acks++; acks == r.Acks {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
	}
	_ = cmd.Wait()
	if acks < r.Acks {
		t.Fatalf("child %s stopped after %d of %d acknowledged writes: %s", r.Name, acks, r.Acks, stderr.String())
	}
	return lines
}

// Fail is for the child: it reports err on stderr, where the parent shows
// it, and exits.
func Fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
	os.Exit(3)
}
