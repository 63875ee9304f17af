package enforcer

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
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

func (d *Datapath) prog(h hook) (*ebpf.Program, string) {
	if h == egress {
		return d.objs.PalisadeEgress, filepath.Join(d.pinDir, "prog_egress")
	}
	return d.objs.PalisadeIngress, filepath.Join(d.pinDir, "prog_ingress")
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

// Uninstall detaches every pinned TCX link and removes the pin directory
// (maps, program). Classic tc filters must be removed with Detach first,
// per interface, in their namespace.
func Uninstall(pinDir string) error {
	if pinDir == "" {
		return fmt.Errorf("%w: no pin directory", ErrConfig)
	}
	ents, err := os.ReadDir(filepath.Join(pinDir, "links"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var errs []error
	for _, e := range ents {
		pin := filepath.Join(pinDir, "links", e.Name())
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			errs = append(errs, l.Unpin(), l.Close())
		} else {
			errs = append(errs, os.Remove(pin))
		}
	}
	errs = append(errs, os.RemoveAll(pinDir))
	return errors.Join(errs...)
}
