//go:build integration

package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/palisade-id/palisade/test/harness"
	"github.com/palisade-id/palisade/test/netns"
	"github.com/palisade-id/palisade/test/testenv"
)

// kill stops the agent by PID with SIGKILL: nothing of it runs at exit.
func (p *agentProc) kill(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(p.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
	p.cmd = nil
}

// runUninstall runs `palisade-agent uninstall`, under `ip netns exec` when
// ns is set, and returns its output and exit code.
func runUninstall(t *testing.T, bin, cfgPath, ns string) (stdout, stderr string, code int) {
	t.Helper()
	args := []string{bin, "uninstall", "-config", cfgPath}
	if ns != "" {
		args = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// auditRecord is the uninstall verb's JSON log line with msg.
func auditRecord(t *testing.T, stderr, msg string) map[string]any {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(stderr))
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == msg {
			return m
		}
	}
	t.Fatalf("no %q record in:\n%s", msg, stderr)
	return nil
}

// TestUninstall: a killed agent's pins keep dropping an unadmitted flow;
// `palisade-agent uninstall` refuses while an agent runs on the pin
// directory, then removes every link, program, map and tc filter so the
// same flow passes, and a second run is a no-op. Once per hook: with TCX
// the links are pins; a classic tc filter holds its program without one.
func TestUninstall(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "ip", "tc", "openssl", "swtpm", "softhsm2-util")
	nw := newEnforceNet(t)
	a := harness.New(t, harness.Options{ListenHost: applHost, Netns: nw.appl.Name})
	a.Ceremony()
	a.Start()
	pins := netns.BPFFS(t)
	srv := newNode(t, a, "")
	admitNodes(t, a, srv)
	base, err := os.ReadFile(srv.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	policy := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, policy, []byte(fmt.Sprintf(`version: 1
rules:
  - name: nodes-to-server-web
    from: spiffe://%s/palisade/node/*
    to: %s
    protocol: tcp
    ports: ["%d"]
`, a.TrustDomain, srv.id(a), webPort)))
	nw.srv.ListenEcho(t, webPort)
	ifaces := []string{"to-good", "to-rogue", "to-appl"}
	// Neither the rogue nor the good client (no agent runs there) is
	// admitted: the policy does not let them in.
	denied := []struct {
		from *netns.NS
		dst  netip.AddrPort
	}{{nw.rogue, netip.AddrPortFrom(rogueS, webPort)}, {nw.good, netip.AddrPortFrom(srv4, webPort)}}

	for _, mode := range []string{"auto", "tc"} {
		t.Run(mode, func(t *testing.T) {
			for _, d := range denied {
				if err := d.from.Reachable(netip.Addr{}, d.dst, 2*time.Second); err != nil {
					t.Fatalf("%v from %s before the agent: %v", d.dst, d.from.Name, err)
				}
			}
			pinDir := filepath.Join(pins, mode)
			cfgPath := filepath.Join(srv.dir, "agent-"+mode+".yaml")
			writeFile(t, cfgPath, append(base, enforcerConfig(a, pinDir, policy, ifaces, nil)+"  attach: "+mode+"\n"...))
			p := startAgent(t, srv.agentBin, cfgPath, nw.srv.Name)
			waitLog(t, p, `"msg":"palisade-agent ready"`, 60*time.Second)
			// Every pin and filter the verb must remove, as it names them.
			want := []string{"program prog_ingress", "program prog_egress", "map peers", "map policy", "map config_map"}
			for _, ifc := range ifaces {
				for _, h := range []string{"ingress", "egress"} {
					if mode == "tc" {
						want = append(want, "tc filter "+ifc+" "+h)
					} else {
						want = append(want, fmt.Sprintf("link links/tcx-%s-%d", h, nw.srv.Ifindex(t, ifc)))
					}
				}
			}
			for _, d := range denied {
				d.from.MustUnreachable(t, netip.Addr{}, d.dst)
			}

			stdout, stderr, code := runUninstall(t, srv.agentBin, cfgPath, nw.srv.Name)
			if code != 1 || !strings.Contains(stderr, "in use by another palisade-agent") {
				t.Fatalf("uninstall beside a running agent: exit %d\n%s%s", code, stdout, stderr)
			}
			if r := auditRecord(t, stderr, "enforcement uninstall refused"); !strings.HasPrefix(fmt.Sprint(r["actor"]), "operator:root,uid=0,pid=") {
				t.Fatalf("refusal record: %v", r)
			}
			if _, err := os.Stat(filepath.Join(pinDir, "prog_ingress")); err != nil {
				t.Fatalf("the refused uninstall changed the pins: %v", err)
			}

			// Documented: the pins keep enforcing without the agent.
			p.kill(t)
			for _, d := range denied {
				d.from.MustUnreachable(t, netip.Addr{}, d.dst)
			}

			stdout, stderr, code = runUninstall(t, srv.agentBin, cfgPath, nw.srv.Name)
			if code != 0 {
				t.Fatalf("uninstall: exit %d\n%s%s", code, stdout, stderr)
			}
			t.Logf("uninstall:\n%s", stdout)
			for _, w := range want {
				if !strings.Contains(stdout, "  "+w+"\n") {
					t.Errorf("uninstall does not report %q:\n%s", w, stdout)
				}
			}
			rec := auditRecord(t, stderr, "enforcement uninstalled")
			if rec["pin_dir"] != pinDir || !strings.HasPrefix(fmt.Sprint(rec["actor"]), "operator:") {
				t.Errorf("audit record: %v", rec)
			}
			if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("pin directory after uninstall: %v", err)
			}
			for _, ifc := range ifaces {
				for _, h := range []string{"ingress", "egress"} {
					if out := netns.Run(t, "ip", "netns", "exec", nw.srv.Name, "tc", "filter", "show", "dev", ifc, h); strings.Contains(out, "palisade_") {
						t.Errorf("tc filter left on %s %s:\n%s", ifc, h, out)
					}
				}
			}
			for _, d := range denied {
				if err := d.from.Reachable(netip.Addr{}, d.dst, 2*time.Second); err != nil {
					t.Fatalf("%v from %s after uninstall: %v", d.dst, d.from.Name, err)
				}
			}

			stdout, stderr, code = runUninstall(t, srv.agentBin, cfgPath, nw.srv.Name)
			if code != 0 || !strings.Contains(stdout, "nothing to remove") {
				t.Fatalf("second uninstall: exit %d\n%s%s", code, stdout, stderr)
			}
			auditRecord(t, stderr, "enforcement uninstall: nothing to remove")
		})
	}
}

// TestUninstallRefuses: uninstall removes nothing from a directory that is
// not an agent's pin directory, and says why.
func TestUninstallRefuses(t *testing.T) {
	testenv.RequireRoot(t)
	bin := filepath.Join(harness.Bin(t), "palisade-agent")
	dir := t.TempDir()
	bpffs := netns.BPFFS(t)
	config := func(t *testing.T, pinDir string) string {
		path := filepath.Join(t.TempDir(), "agent.yaml")
		writeFile(t, path, []byte(`attestation:
  server: 127.0.0.1:1
  trust_domain: example.org
  trust_bundle: /nonexistent/bundle.pem
  tpm: swtpm:unix:/nonexistent
appliance_url: http://127.0.0.1:1
data_dir: `+filepath.Join(dir, "data")+`
enforcer:
  interfaces: [lo]
  attach: tcx
  policy_file: /nonexistent/policy.yaml
  pin_dir: `+pinDir+"\n"))
		return path
	}

	// A foreign pin beside names the agent uses.
	shared := filepath.Join(bpffs, "shared")
	if err := os.Mkdir(shared, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"peers", "other"} {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if err := m.Pin(filepath.Join(shared, name)); err != nil {
			t.Fatal(err)
		}
	}
	plain := filepath.Join(dir, "plain")
	if err := os.Mkdir(plain, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(plain, "keep"), []byte("x"))

	tests := []struct {
		name, pinDir, want string
		code               int
		kept               string // must survive
	}{
		{"not on bpffs", plain, "is not a directory on bpffs", 1, filepath.Join(plain, "keep")},
		{"foreign pin", shared, "it holds other, which the agent never pins", 1, filepath.Join(shared, "peers")},
		{"absent, bpffs not mounted there", filepath.Join(dir, "absent", "pins"), "is bpffs mounted?", 1, ""},
		{"absent on bpffs: nothing to remove", filepath.Join(bpffs, "never"), "nothing to remove", 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, code := runUninstall(t, bin, config(t, tc.pinDir), "")
			t.Logf("exit %d\n%s%s", code, stdout, stderr)
			if code != tc.code || !strings.Contains(stdout+stderr, tc.want) {
				t.Fatalf("exit %d, output %s%s; want %d naming %q", code, stdout, stderr, tc.code, tc.want)
			}
			if tc.kept != "" {
				if _, err := os.Stat(tc.kept); err != nil {
					t.Fatalf("refused uninstall removed %s: %v", tc.kept, err)
				}
			}
		})
	}

	t.Run("no enforcer section", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "agent.yaml")
		writeFile(t, path, []byte("attestation:\n  server: 127.0.0.1:1\n  trust_domain: example.org\n  trust_bundle: /b.pem\n  tpm: swtpm:unix:/s\n"))
		if stdout, stderr, code := runUninstall(t, bin, path, ""); code != 2 || !strings.Contains(stderr, "no enforcer section") {
			t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
		}
	})
}
