package enforcer

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// AttachMode selects the hook.
type AttachMode string

const (
	// AttachAuto uses TCX and falls back to tc clsact where the kernel
	// lacks TCX (< 6.6).
	AttachAuto AttachMode = "auto"
	// AttachTCX requires TCX; the link is pinned in bpffs.
	AttachTCX AttachMode = "tcx"
	// AttachTC uses a classic clsact ingress filter (iproute2's tc) running
	// the pinned program. The filter lives in the qdisc, not the process.
	AttachTC AttachMode = "tc"
)

// tcPref is the filter priority of the classic tc fallback; the filter runs
// before any other at a higher pref number.
const tcPref = "1"

// hook is one direction of an interface.
type hook struct {
	name   string // "ingress" or "egress"
	attach ebpf.AttachType
}

var (
	ingress = hook{"ingress", ebpf.AttachTCXIngress}
	egress  = hook{"egress", ebpf.AttachTCXEgress}
)

func (d *Datapath) tcxPin(h hook, ifindex int) string {
	return filepath.Join(d.pinDir, "links", "tcx-"+h.name+"-"+strconv.Itoa(ifindex))
}

// progPin is the name of the hook's program pin in the pin directory.
func (h hook) progPin() string { return "prog_" + h.name }

func (d *Datapath) prog(h hook) (*ebpf.Program, string) {
	if h == egress {
		return d.objs.PalisadeEgress, filepath.Join(d.pinDir, h.progPin())
	}
	return d.objs.PalisadeIngress, filepath.Join(d.pinDir, h.progPin())
}

// Attach puts the program on ifindex's ingress (in the calling thread's
// network namespace) and returns the hook used. A link already pinned for
// the interface, by this or an earlier daemon, is adopted and switched to
// this program atomically, so there is no window without enforcement.
// Attach needs a PinDir: an unpinned link would vanish with the process
// and fail open.
func (d *Datapath) Attach(ifindex int, mode AttachMode) (AttachMode, error) {
	return d.attach(ingress, ifindex, mode)
}

// AttachEgress puts the on-demand admission program on ifindex's egress.
// It never drops: it asks the agent (AdmitRequests) to admit this node to
// destinations it sends a TCP SYN to without an admission.
func (d *Datapath) AttachEgress(ifindex int, mode AttachMode) (AttachMode, error) {
	return d.attach(egress, ifindex, mode)
}

func (d *Datapath) attach(h hook, ifindex int, mode AttachMode) (AttachMode, error) {
	if d.pinDir == "" {
		return "", fmt.Errorf("%w: attaching needs a bpffs pin directory (fail closed)", ErrConfig)
	}
	switch mode {
	case AttachAuto, AttachTCX, AttachTC, "":
	default:
		return "", fmt.Errorf("%w: attach mode %q (want auto, tcx or tc)", ErrConfig, mode)
	}
	if mode != AttachTC {
		err := d.attachTCX(h, ifindex)
		if err == nil {
			return AttachTCX, nil
		}
		if mode == AttachTCX || !errors.Is(err, ebpf.ErrNotSupported) {
			return "", err
		}
	}
	if err := d.attachTC(h, ifindex); err != nil {
		return "", err
	}
	return AttachTC, nil
}

func (d *Datapath) attachTCX(h hook, ifindex int) error {
	pin := d.tcxPin(h, ifindex)
	prog, _ := d.prog(h)
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		err = l.Update(prog)
		l.Close()
		if err == nil {
			return nil
		}
		// A link whose interface vanished cannot be updated: replace it.
		_ = os.Remove(pin)
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("enforcer: load pinned link %s: %w", pin, err)
	}
	l, err := link.AttachTCX(link.TCXOptions{
		Interface: ifindex,
		Program:   prog,
		Attach:    h.attach,
		Anchor:    link.Head(), // first, so no earlier program can pass around us
	})
	if err != nil {
		return fmt.Errorf("enforcer: attach TCX %s to ifindex %d: %w", h.name, ifindex, err)
	}
	defer l.Close()
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("enforcer: pin link: %w", err)
	}
	return nil
}

func tcCmd(args ...string) error {
	out, err := exec.Command("tc", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("tc %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (d *Datapath) attachTC(h hook, ifindex int) error {
	_, progPin := d.prog(h)
	ifc, err := net.InterfaceByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("enforcer: interface %d: %w", ifindex, err)
	}
	// An existing clsact is fine; iproute2 reports it either way.
	if err := tcCmd("qdisc", "add", "dev", ifc.Name, "clsact"); err != nil &&
		!strings.Contains(err.Error(), "File exists") && !strings.Contains(err.Error(), "Exclusivity flag on") {
		return fmt.Errorf("enforcer: %w", err)
	}
	// replace swaps the program in place: no window without a filter.
	if err := tcCmd("filter", "replace", "dev", ifc.Name, h.name, "pref", tcPref, "handle", "1",
		"bpf", "direct-action", "object-pinned", progPin); err != nil {
		return fmt.Errorf("enforcer: %w", err)
	}
	return nil
}

// Detach removes the programs from ifindex (ingress and egress, TCX and
// tc). This is an operator action: a daemon stopping does not detach.
func (d *Datapath) Detach(ifindex int) error {
	if d.pinDir == "" {
		return fmt.Errorf("%w: no pin directory", ErrConfig)
	}
	var errs []error
	for _, h := range []hook{ingress, egress} {
		pin := d.tcxPin(h, ifindex)
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			if err := l.Unpin(); err != nil {
				errs = append(errs, err)
			}
			if err := l.Close(); err != nil {
				errs = append(errs, err)
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			_ = os.Remove(pin) // stale pin of a vanished interface
		}
		if ifc, err := net.InterfaceByIndex(ifindex); err == nil {
			if _, lerr := exec.LookPath("tc"); lerr == nil {
				// Absent filter: tc fails, which is fine here.
				_ = tcCmd("filter", "del", "dev", ifc.Name, h.name, "pref", tcPref, "handle", "1", "bpf")
			}
		}
	}
	return errors.Join(errs...)
}

// Uninstall is the operator's removal of enforcement (an agent stopping
// never removes it). It deletes the classic tc filters running the agent's
// programs on every interface in the calling thread's network namespace (a
// filter holds its program without any pin), unpins the TCX links under
// pinDir (which detaches them), then removes the pinned programs and maps
// and pinDir itself. It returns what it removed, in that order. A filter
// or link it cannot remove fails it and leaves the programs and maps pinned.
//
// The interface names a caller passes are not consulted: an interface an
// earlier configuration named keeps its filter, still dropping traffic
// with its maps unpinned, after the current configuration drops it.
//
// pinDir absent where bpffs is mounted means nothing is pinned: not an
// error. A pinDir off bpffs, or holding anything the agent does not pin, is
// refused before anything changes: a wrong path must not cost another
// program its pins.
func Uninstall(pinDir string, _ ...string) ([]string, error) {
	if !filepath.IsAbs(pinDir) {
		return nil, fmt.Errorf("%w: pin directory %q: want an absolute path", ErrConfig, pinDir)
	}
	links, objs, err := agentPins(pinDir)
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	if _, err := exec.LookPath("tc"); err == nil { // without tc, no filter of ours
		devs, err := clsactDevs()
		errs = append(errs, err)
		for _, name := range devs {
			for _, h := range []hook{ingress, egress} {
				ok, err := deleteTCFilter(name, h)
				if err != nil {
					if _, lerr := net.InterfaceByName(name); lerr != nil {
						break // gone since listed, and its filters with it
					}
				}
				if ok {
					removed = append(removed, "tc filter "+name+" "+h.name)
				}
				errs = append(errs, err)
			}
		}
	}
	for _, rel := range links {
		pin := filepath.Join(pinDir, rel)
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			err = errors.Join(l.Unpin(), l.Close())
			if err != nil {
				errs = append(errs, fmt.Errorf("enforcer: unpin %s: %w", pin, err))
				continue
			}
		} else if err := os.Remove(pin); err != nil { // stale pin of a vanished interface
			errs = append(errs, err)
			continue
		}
		removed = append(removed, "link "+rel)
	}
	// Maps and programs stay while a filter or link is left, so that a
	// restarted agent can still adopt what enforces.
	if err := errors.Join(errs...); err != nil {
		return removed, err
	}
	for _, name := range objs {
		if err := os.Remove(filepath.Join(pinDir, name)); err != nil {
			errs = append(errs, err)
			continue
		}
		kind := "map "
		if strings.HasPrefix(name, "prog_") {
			kind = "program "
		}
		removed = append(removed, kind+name)
	}
	for _, dir := range []string{filepath.Join(pinDir, "links"), pinDir} {
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return removed, errors.Join(errs...)
}

// agentPins lists the TCX links (relative to pinDir) and the programs and
// maps an agent pinned in pinDir, refusing a directory that is not one.
func agentPins(pinDir string) (links, objs []string, err error) {
	fi, err := os.Stat(pinDir)
	if errors.Is(err, os.ErrNotExist) {
		dir := filepath.Dir(pinDir)
		for ; dir != "/"; dir = filepath.Dir(dir) {
			if _, err := os.Stat(dir); err == nil {
				break
			}
		}
		if !onBPFFS(dir) {
			return nil, nil, fmt.Errorf("%w: pin directory %s does not exist and %s is not on bpffs (is bpffs mounted?)", ErrConfig, pinDir, dir)
		}
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("enforcer: pin dir: %w", err)
	}
	if !fi.IsDir() || !onBPFFS(pinDir) {
		return nil, nil, fmt.Errorf("%w: %s is not a directory on bpffs: not an agent's pin directory", ErrConfig, pinDir)
	}
	spec, err := loadPalisade()
	if err != nil {
		return nil, nil, fmt.Errorf("enforcer: datapath spec: %w", err)
	}
	ours := func(name string) bool {
		if m, ok := spec.Maps[name]; ok {
			return m.Pinning == ebpf.PinByName
		}
		for _, h := range []hook{ingress, egress} {
			if name == h.progPin() || name == h.progPin()+"_new" {
				return true
			}
		}
		return false
	}
	ents, err := os.ReadDir(pinDir)
	if err != nil {
		return nil, nil, fmt.Errorf("enforcer: pin dir: %w", err)
	}
	var foreign []string
	for _, e := range ents {
		switch {
		case e.Name() == "links" && e.IsDir():
			lents, err := os.ReadDir(filepath.Join(pinDir, "links"))
			if err != nil {
				return nil, nil, fmt.Errorf("enforcer: pin dir: %w", err)
			}
			for _, l := range lents {
				rel := filepath.Join("links", l.Name())
				if isTCXPin(l.Name()) {
					links = append(links, rel)
				} else {
					foreign = append(foreign, rel)
				}
			}
		case !e.IsDir() && ours(e.Name()):
			objs = append(objs, e.Name())
		default:
			foreign = append(foreign, e.Name())
		}
	}
	if len(foreign) > 0 {
		return nil, nil, fmt.Errorf("%w: %s is not an agent's pin directory: it holds %s, which the agent never pins; nothing removed",
			ErrConfig, pinDir, strings.Join(foreign, ", "))
	}
	return links, objs, nil
}

func onBPFFS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}

// isTCXPin matches the names tcxPin gives links.
func isTCXPin(name string) bool {
	for _, h := range []hook{ingress, egress} {
		if n, ok := strings.CutPrefix(name, "tcx-"+h.name+"-"); ok {
			i, err := strconv.Atoi(n)
			return err == nil && i > 0
		}
	}
	return false
}

// clsactDevs lists the devices, in the calling thread's network namespace,
// whose clsact (or ingress) qdisc can hold filters on the ingress or egress
// hook: one tc run instead of two per interface on a host full of veths.
func clsactDevs() ([]string, error) {
	out, err := exec.Command("tc", "-j", "qdisc", "show").Output()
	if err != nil {
		return nil, fmt.Errorf("enforcer: tc qdisc show: %w", err)
	}
	var qdiscs []struct {
		Kind string `json:"kind"`
		Dev  string `json:"dev"`
	}
	if err := json.Unmarshal(out, &qdiscs); err != nil {
		return nil, fmt.Errorf("enforcer: tc qdisc show: %w", err)
	}
	var devs []string
	for _, q := range qdiscs {
		if (q.Kind == "clsact" || q.Kind == "ingress") && !slices.Contains(devs, q.Dev) {
			devs = append(devs, q.Dev)
		}
	}
	return devs, nil
}

// deleteTCFilter deletes the classic tc filter at the agent's chain, pref
// and handle on ifname's hook if it runs one of the agent's programs.
func deleteTCFilter(ifname string, h hook) (bool, error) {
	out, err := exec.Command("tc", "-j", "filter", "show", "dev", ifname, h.name, "pref", tcPref).Output()
	if err != nil {
		return false, fmt.Errorf("enforcer: tc filter show dev %s %s: %w", ifname, h.name, err)
	}
	var filters []struct {
		Kind    string `json:"kind"`
		Chain   int    `json:"chain"`
		Options struct {
			Handle string `json:"handle"`
			Prog   struct {
				Name string `json:"name"`
			} `json:"prog"`
		} `json:"options"`
	}
	if err := json.Unmarshal(out, &filters); err != nil {
		return false, fmt.Errorf("enforcer: tc filter show dev %s %s: %w", ifname, h.name, err)
	}
	for _, f := range filters {
		// The kernel keeps the first 15 bytes of a program name.
		if f.Kind == "bpf" && f.Chain == 0 && f.Options.Handle == "0x1" && strings.HasPrefix(f.Options.Prog.Name, "palisade_") {
			if err := tcCmd("filter", "del", "dev", ifname, h.name, "pref", tcPref, "handle", "1", "bpf"); err != nil {
				return false, fmt.Errorf("enforcer: %w", err)
			}
			return true, nil
		}
	}
	return false, nil
}
