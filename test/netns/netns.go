//go:build linux

package netns

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// NS is a network namespace created by the test (ip netns add) and deleted
// at cleanup.
type NS struct {
	Name string
}

// Run runs a command and fails t with its output if it fails.
func Run(t testing.TB, args ...string) string {
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

// New creates the namespace pal-<role>-<random> with lo up.
func New(t testing.TB, role string) *NS {
	t.Helper()
	n := &NS{Name: "pal-" + role + "-" + randSuffix()}
	Run(t, "ip", "netns", "add", n.Name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n.Name).Run() })
	n.IP(t, "link", "set", "lo", "up")
	return n
}

// IP runs `ip -n <ns> args...`.
func (n *NS) IP(t testing.TB, args ...string) string {
	t.Helper()
	return Run(t, append([]string{"ip", "-n", n.Name}, args...)...)
}

// Link connects a and b with a veth pair named an (in a) and bn (in b),
// addresses given as CIDRs (IPv6 without duplicate address detection).
// The pair goes away with either namespace.
func Link(t testing.TB, a *NS, an string, aAddrs []string, b *NS, bn string, bAddrs []string) {
	t.Helper()
	tmpA, tmpB := "v"+randSuffix(), "v"+randSuffix()
	Run(t, "ip", "link", "add", tmpA, "type", "veth", "peer", "name", tmpB)
	Run(t, "ip", "link", "set", tmpA, "netns", a.Name, "name", an)
	Run(t, "ip", "link", "set", tmpB, "netns", b.Name, "name", bn)
	for _, x := range []struct {
		ns    *NS
		name  string
		addrs []string
	}{{a, an, aAddrs}, {b, bn, bAddrs}} {
		for _, ad := range x.addrs {
			args := []string{"addr", "add", ad, "dev", x.name}
			if strings.Contains(ad, ":") {
				args = append(args, "nodad")
			}
			x.ns.IP(t, args...)
		}
		x.ns.IP(t, "link", "set", x.name, "up")
	}
}

// Do runs fn on a thread switched into n: sockets fn creates belong to n.
func (n *NS) Do(fn func() error) error {
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
		target, err := os.Open(filepath.Join("/run/netns", n.Name))
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", n.Name, err)
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

// Ifindex is the index of interface name inside n.
func (n *NS) Ifindex(t testing.TB, name string) int {
	t.Helper()
	var idx int
	if err := n.Do(func() error {
		ifc, err := net.InterfaceByName(name)
		if err != nil {
			return err
		}
		idx = ifc.Index
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return idx
}

// BPFFS mounts a private bpffs for the test's pins; unmounting it at
// cleanup releases every pin under it.
func BPFFS(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}
