package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestUninstallTargets(t *testing.T) {
	tests := []struct {
		name       string
		yaml       string
		wantPinDir string
		wantIfaces []string
		wantUsage  bool
	}{
		{"default pin_dir; auto may have fallen back to tc", baseConfig + enforcerSection + "appliance_url: http://a:1\n",
			"/sys/fs/bpf/palisade", []string{"eth0"}, false},
		{"configured pin_dir, tc", baseConfig + enforcerSection + "  pin_dir: /sys/fs/bpf/x\n  attach: tc\nappliance_url: http://a:1\n",
			"/sys/fs/bpf/x", []string{"eth0"}, false},
		{"tcx: links are pinned, no tc filters", baseConfig + enforcerSection + "  attach: tcx\nappliance_url: http://a:1\n",
			"/sys/fs/bpf/palisade", nil, false},
		{"no enforcer section", baseConfig, "", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			pinDir, ifaces, err := uninstallTargets(cfg)
			var ue usageError
			if tc.wantUsage && !errors.As(err, &ue) || !tc.wantUsage && err != nil {
				t.Fatalf("err = %v, want a usage error: %v", err, tc.wantUsage)
			}
			if pinDir != tc.wantPinDir || !slices.Equal(ifaces, tc.wantIfaces) {
				t.Fatalf("targets %q %q, want %q %q", pinDir, ifaces, tc.wantPinDir, tc.wantIfaces)
			}
		})
	}
}

func TestLockPinDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pins")
	if _, err := lockPinDir(dir, false); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("absent dir without create: %v, want ErrNotExist", err)
	}
	release, err := lockPinDir(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	// A second holder (another open file description) is refused.
	if _, err := lockPinDir(dir, false); !errors.Is(err, errPinDirBusy) {
		t.Fatalf("second lock: %v, want errPinDirBusy", err)
	}
	release()
	release, err = lockPinDir(dir, false)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	release()
}
