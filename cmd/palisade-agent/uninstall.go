package main

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"

	"github.com/palisade-id/palisade/cmd/internal/operator"
	"github.com/palisade-id/palisade/enforcer"
)

// errPinDirBusy: another palisade-agent (run or uninstall) holds the pin
// directory's lock.
var errPinDirBusy = errors.New("in use by another palisade-agent (run or uninstall)")

// lockPinDir takes an exclusive, non-blocking flock on dir (created first
// when create is set) and holds it until release. `run` holds it for its
// lifetime, so uninstall cannot pull enforcement from under a live agent
// and two agents never share pins. The kernel drops it when the process
// dies.
func lockPinDir(dir string, create bool) (release func(), err error) {
	if create {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("pin_dir: %w", err)
		}
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("pin_dir: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("pin_dir %s: %w", dir, errPinDirBusy)
		}
		return nil, fmt.Errorf("pin_dir %s: lock: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

// uninstallTargets is what uninstall removes: the pin directory, and the
// interfaces to clear of tc filters (none when attach is tcx: TCX links
// live in the pin directory).
func uninstallTargets(cfg *Config) (pinDir string, ifaces []string, err error) {
	e := cfg.Enforcer
	if e == nil {
		return "", nil, usageError{errors.New("uninstall: the configuration has no enforcer section (use the one the agent ran with)")}
	}
	if enforcer.AttachMode(e.Attach) != enforcer.AttachTCX {
		ifaces = e.Interfaces
	}
	return e.PinDir, ifaces, nil
}

func uninstallCmd(args []string) error {
	cfg, err := loadFlags("uninstall", args, nil)
	if err != nil {
		return err
	}
	pinDir, ifaces, err := uninstallTargets(cfg)
	if err != nil {
		return err
	}
	// The JSON log is the agent's audit trail of operator actions.
	log := cfg.Log.NewLogger().With("actor", operator.Actor(), "pin_dir", pinDir)
	if len(ifaces) > 0 {
		log = log.With("interfaces", ifaces)
	}
	release, err := lockPinDir(pinDir, false)
	switch {
	case err == nil:
		defer release()
	case errors.Is(err, os.ErrNotExist): // Uninstall tells absent from wrong
	default:
		log.Error("enforcement uninstall refused", "err", err)
		if errors.Is(err, errPinDirBusy) {
			return fmt.Errorf("uninstall refused: %w; stop it first", err)
		}
		return err
	}
	for _, name := range ifaces {
		if _, err := net.InterfaceByName(name); err != nil {
			fmt.Printf("warning: configured interface %s is not in this network namespace\n", name)
			log.Warn("interface not found", "interface", name)
		}
	}
	removed, err := enforcer.Uninstall(pinDir, ifaces...)
	if err != nil {
		if removed == nil && errors.Is(err, enforcer.ErrConfig) {
			log.Error("enforcement uninstall refused", "err", err)
		} else {
			log.Error("enforcement uninstall failed", "removed", removed, "err", err)
		}
		for _, r := range removed {
			fmt.Println("removed", r)
		}
		return err
	}
	if len(removed) == 0 {
		log.Info("enforcement uninstall: nothing to remove")
		fmt.Printf("nothing to remove: no palisade enforcement under %s", pinDir)
		if len(ifaces) > 0 {
			fmt.Printf(" or on %v", ifaces)
		}
		fmt.Println()
		return nil
	}
	log.Info("enforcement uninstalled", "removed", removed)
	fmt.Println("removed; palisade no longer filters this node's traffic:")
	for _, r := range removed {
		fmt.Println("  " + r)
	}
	return nil
}
