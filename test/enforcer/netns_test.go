//go:build integration

package enforcer

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// netns is a network namespace created by the test (ip netns add).
type netns struct {
	name string
}

func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func randSuffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func newNetns(t testing.TB, role string) *netns {
	t.Helper()
	n := &netns{name: "pal-" + role + "-" + randSuffix()}
	run(t, "ip", "netns", "add", n.name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n.name).Run() })
	n.ip(t, "link", "set", "lo", "up")
	return n
}

func (n *netns) ip(t testing.TB, args ...string) string {
	t.Helper()
	return run(t, append([]string{"ip", "-n", n.name}, args...)...)
}

// link connects a and b with a veth pair named an (in a) and bn (in b),
// addresses given as CIDRs.
func link(t testing.TB, a *netns, an string, aAddrs []string, b *netns, bn string, bAddrs []string) {
	t.Helper()
	tmpA, tmpB := "v"+randSuffix(), "v"+randSuffix()
	run(t, "ip", "link", "add", tmpA, "type", "veth", "peer", "name", tmpB)
	run(t, "ip", "link", "set", tmpA, "netns", a.name, "name", an)
	run(t, "ip", "link", "set", tmpB, "netns", b.name, "name", bn)
	for _, x := range []struct {
		ns    *netns
		name  string
		addrs []string
	}{{a, an, aAddrs}, {b, bn, bAddrs}} {
		for _, ad := range x.addrs {
			args := []string{"addr", "add", ad, "dev", x.name}
			if strings.Contains(ad, ":") {
				args = append(args, "nodad")
			}
			x.ns.ip(t, args...)
		}
		x.ns.ip(t, "link", "set", x.name, "up")
	}
}

// do runs fn on a thread switched into n: sockets fn creates belong to n.
func (n *netns) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread is not unlocked if switching back fails: it then
		// exits with the goroutine instead of serving others in n.
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(filepath.Join("/run/netns", n.name))
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", n.name, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns back: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// bpffs mounts a private bpffs for the test's pins.
func bpffs(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}
