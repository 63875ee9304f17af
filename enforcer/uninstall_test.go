package enforcer

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/palisade-id/palisade/test/netns"
	"github.com/palisade-id/palisade/test/testenv"
)

// uninstallNet is a namespace whose veths cfg0 and old0 both carry the
// agent's programs on ingress and egress, attached in mode: cfg0 is what
// the current configuration names, old0 what an earlier one did.
type uninstallNet struct {
	ns     *netns.NS
	pinDir string
	bpffs  string
}

func newUninstallNet(t *testing.T, mode AttachMode) *uninstallNet {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.Require(t, "ip", "tc")
	u := &uninstallNet{ns: netns.New(t, "uninst"), bpffs: netns.BPFFS(t)}
	u.pinDir = filepath.Join(u.bpffs, "pins")
	for _, name := range []string{"cfg0", "old0", "other0"} {
		u.ns.IP(t, "link", "add", name, "type", "veth", "peer", "name", name+"p")
	}
	d, err := OpenDatapath(DatapathOptions{PinDir: u.pinDir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close() // the agent has stopped before uninstall
	for _, name := range []string{"cfg0", "old0"} {
		ifindex := u.ns.Ifindex(t, name)
		if err := u.ns.Do(func() error {
			for _, attach := range []func(int, AttachMode) (AttachMode, error){d.Attach, d.AttachEgress} {
				if got, err := attach(ifindex, mode); err != nil || got != mode {
					return fmt.Errorf("attach %s: %s, %w", name, got, err)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	return u
}

func (u *uninstallNet) tc(t *testing.T, args ...string) string {
	t.Helper()
	return netns.Run(t, append([]string{"ip", "netns", "exec", u.ns.Name, "tc"}, args...)...)
}

// filters describes every tc filter on the test's interfaces.
func (u *uninstallNet) filters(t *testing.T) []string {
	t.Helper()
	var all []string
	for _, dev := range []string{"cfg0", "old0", "other0"} {
		for _, h := range []string{"ingress", "egress"} {
			out := u.tc(t, "-j", "filter", "show", "dev", dev, h)
			if strings.TrimSpace(out) == "" {
				continue // no clsact
			}
			var fs []struct {
				Kind    string `json:"kind"`
				Pref    int    `json:"pref"`
				Options struct {
					Handle string `json:"handle"`
					Prog   struct {
						Name string `json:"name"`
					} `json:"prog"`
				} `json:"options"`
			}
			if err := json.Unmarshal([]byte(out), &fs); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			for _, f := range fs {
				if f.Kind == "bpf" && f.Options.Handle == "" {
					continue // the pref's header
				}
				s := fmt.Sprintf("%s %s %s pref %d", dev, h, f.Kind, f.Pref)
				if f.Options.Handle != "" {
					s += " handle " + f.Options.Handle + " " + f.Options.Prog.Name
				}
				if !slices.Contains(all, s) {
					all = append(all, s)
				}
			}
		}
	}
	slices.Sort(all)
	return all
}

// addForeignFilters adds filters uninstall must leave: another program at
// the agent's pref and handle, and filters at other prefs beside the
// agent's. It returns their descriptions.
func (u *uninstallNet) addForeignFilters(t *testing.T) []string {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "foreign",
		Type:         ebpf.SchedCLS,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	pin := filepath.Join(u.bpffs, "foreign")
	if err := prog.Pin(pin); err != nil {
		t.Fatal(err)
	}
	u.tc(t, "qdisc", "add", "dev", "other0", "clsact")
	u.tc(t, "filter", "add", "dev", "other0", "ingress", "pref", "1", "handle", "1", "bpf", "da", "object-pinned", pin)
	u.tc(t, "filter", "add", "dev", "old0", "ingress", "pref", "2", "handle", "1", "bpf", "da", "object-pinned", pin)
	u.tc(t, "filter", "add", "dev", "cfg0", "egress", "pref", "7", "u32", "match", "u32", "0", "0")
	return []string{
		"cfg0 egress u32 pref 7",
		"old0 ingress bpf pref 2 handle 0x1 foreign",
		"other0 ingress bpf pref 1 handle 0x1 foreign",
	}
}

func (u *uninstallNet) uninstall(t *testing.T, ifaces ...string) ([]string, error) {
	t.Helper()
	var removed []string
	err := u.ns.Do(func() error {
		var err error
		removed, err = Uninstall(u.pinDir, ifaces...)
		return err
	})
	t.Logf("removed %q, err %v", removed, err)
	return removed, err
}

// TestUninstallClearsUnconfiguredInterfaces: in tc mode, uninstall removes
// the agent's filter from an interface the configuration no longer names
// too (it would go on filtering with its maps unpinned), and no other
// filter.
func TestUninstallClearsUnconfiguredInterfaces(t *testing.T) {
	u := newUninstallNet(t, AttachTC)
	foreign := u.addForeignFilters(t)
	before := u.filters(t)
	for _, dev := range []string{"cfg0", "old0"} {
		for _, h := range []string{"ingress", "egress"} {
			if !slices.ContainsFunc(before, func(f string) bool {
				return strings.HasPrefix(f, dev+" "+h+" bpf pref 1 handle 0x1 palisade_")
			}) {
				t.Fatalf("no agent filter on %s %s: %q", dev, h, before)
			}
		}
	}

	removed, err := u.uninstall(t, "cfg0")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"tc filter cfg0 ingress", "tc filter cfg0 egress", "tc filter old0 ingress", "tc filter old0 egress"} {
		if !slices.Contains(removed, w) {
			t.Errorf("uninstall does not report %q", w)
		}
	}
	if got := u.filters(t); !slices.Equal(got, foreign) {
		t.Errorf("filters after uninstall:\n%s\nwant only the foreign ones:\n%s", strings.Join(got, "\n"), strings.Join(foreign, "\n"))
	}
	if _, err := os.Stat(u.pinDir); !os.IsNotExist(err) {
		t.Errorf("pin directory after uninstall: %v", err)
	}
}

// TestUninstallFilterFailureKeepsPins: a filter uninstall cannot delete,
// on an interface the configuration no longer names, fails the uninstall
// and leaves the programs and maps pinned for a retry.
func TestUninstallFilterFailureKeepsPins(t *testing.T) {
	u := newUninstallNet(t, AttachTC)
	tcPath, err := exec.LookPath("tc")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	script := "#!/bin/sh\ncase \"$*\" in *'filter del dev old0 ingress'*) echo refused >&2; exit 2;; esac\nexec " + tcPath + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(bin, "tc"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))

	removed, err := u.uninstall(t, "cfg0")
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("uninstall with an undeletable filter: err %v", err)
	}
	if slices.Contains(removed, "tc filter old0 ingress") || !slices.Contains(removed, "tc filter old0 egress") {
		t.Errorf("removed %q", removed)
	}
	for _, name := range []string{"prog_ingress", "prog_egress", "peers"} {
		if _, err := os.Stat(filepath.Join(u.pinDir, name)); err != nil {
			t.Errorf("pin after a failed uninstall: %v", err)
		}
	}
}

// TestUninstallTCXLinksOfEveryInterface: TCX links are pinned per
// interface in the pin directory, so uninstall detaches them all without
// being told the interfaces.
func TestUninstallTCXLinksOfEveryInterface(t *testing.T) {
	u := newUninstallNet(t, AttachTCX)
	if _, err := u.uninstall(t); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"cfg0", "old0"} {
		ifindex := u.ns.Ifindex(t, name)
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			if err := u.ns.Do(func() error {
				res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
				if err == nil && len(res.Programs) > 0 {
					err = fmt.Errorf("%d programs left", len(res.Programs))
				}
				return err
			}); err != nil {
				t.Errorf("%s %s: %v", name, at, err)
			}
		}
	}
}
