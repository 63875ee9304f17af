//go:build integration

package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/palisade-id/palisade/attestor"
	"github.com/palisade-id/palisade/test/harness"
	"github.com/palisade-id/palisade/test/testenv"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// agentProc is a running `palisade-agent run`.
type agentProc struct {
	cmd  *exec.Cmd
	done chan error
	mu   sync.Mutex
	logs bytes.Buffer
}

func (p *agentProc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.Write(b)
}

func (p *agentProc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// startAgent runs `palisade-agent run`, optionally under `ip netns exec`;
// it is stopped by PID at cleanup.
func startAgent(t *testing.T, bin, cfgPath, netns string) *agentProc {
	t.Helper()
	args := []string{bin, "run", "-config", cfgPath}
	if netns != "" {
		args = append([]string{"ip", "netns", "exec", netns}, args...)
	}
	p := &agentProc{done: make(chan error, 1)}
	p.cmd = exec.Command(args[0], args[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.stop(10*time.Second) != nil {
			t.Logf("agent log:\n%s", p.log())
		}
	})
	return p
}

// stop sends SIGTERM and waits; SIGKILL after d.
func (p *agentProc) stop(d time.Duration) error {
	if p.cmd == nil {
		return nil
	}
	defer func() { p.cmd = nil }()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		return err
	case <-time.After(d):
		_ = p.cmd.Process.Kill()
		<-p.done
		return errors.New("agent ignored SIGTERM")
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
	}
}

// TestRunKeepsNodeSVIDCurrent runs the agent without an enforcer against an
// appliance issuing 12s SVIDs: it publishes the node certificate (never the
// key), re-attests with a fresh quote before expiry, and logs JSON.
func TestRunKeepsNodeSVIDCurrent(t *testing.T) {
	testenv.Require(t, "openssl", "swtpm", "softhsm2-util")
	a := harness.New(t, harness.Options{ExtraCA: "x509_svid_ttl: 12s\nbackdate: 1s"})
	a.Ceremony()
	a.Start()
	n := newNode(t, a, "")
	n.admit(t, a)
	p := startAgent(t, n.agentBin, n.cfgPath, "")
	dataDir := filepath.Join(n.dir, "data")
	certPath := filepath.Join(dataDir, "node-svid.pem")
	bundle := applianceBundle(t, a)
	serial := func() string {
		if _, err := os.Stat(certPath); err != nil {
			return ""
		}
		chain := harness.ReadCerts(t, certPath)
		id, _, err := x509svid.Verify(chain, bundle)
		if err != nil || id.String() != n.id(a) {
			t.Fatalf("published node certificate: %s %v", id, err)
		}
		return chain[0].SerialNumber.Text(16)
	}
	waitFor(t, 30*time.Second, "first node SVID", func() bool { return serial() != "" })
	first := serial()
	waitFor(t, 15*time.Second, "renewal", func() bool { s := serial(); return s != "" && s != first })
	entries, _ := os.ReadDir(dataDir)
	for _, e := range entries {
		if b, _ := os.ReadFile(filepath.Join(dataDir, e.Name())); bytes.Contains(b, []byte("PRIVATE KEY")) {
			t.Fatalf("%s holds a private key", e.Name())
		}
	}
	var rec attestor.NodeRecord
	if err := json.Unmarshal([]byte(a.MustCLI("node", "show", "-node", n.id(a))), &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Attestations < 2 {
		t.Fatalf("node record shows %d attestations, want a fresh one per renewal", rec.Attestations)
	}
	if err := p.stop(10 * time.Second); err != nil {
		t.Fatalf("agent exit: %v\n%s", err, p.log())
	}
	sc := bufio.NewScanner(strings.NewReader(p.log()))
	lines := 0
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", sc.Text())
		}
		lines++
	}
	if lines == 0 || !strings.Contains(p.log(), `"msg":"node SVID"`) {
		t.Fatalf("agent log:\n%s", p.log())
	}
}

// TestConfigRefused: a bad configuration stops the agent with exit code 2
// and an error naming the problem, before any attestation.
func TestConfigRefused(t *testing.T) {
	bin := filepath.Join(harness.Bin(t), "palisade-agent")
	dir := t.TempDir()
	base := "attestation:\n  server: 127.0.0.1:1\n  trust_domain: example.org\n  trust_bundle: " + filepath.Join(dir, "missing.pem") + "\n  tpm: swtpm:unix:/nonexistent\ndata_dir: " + filepath.Join(dir, "data") + "\n"
	tests := []struct {
		name, yaml, want string
		code             int
	}{
		{"unknown key", base + "enforcr: {}\n", "field enforcr not found", 2},
		{"enforcer without appliance_url", base + "enforcer:\n  interfaces: [lo]\n  policy_file: /p\n", "appliance_url is required", 2},
		{"missing trust bundle", base, "trust bundle", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := filepath.Join(dir, "agent.yaml")
			writeFile(t, cfg, []byte(tc.yaml))
			out, err := exec.Command(bin, "run", "-config", cfg).CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != tc.code || !strings.Contains(string(out), tc.want) {
				t.Fatalf("exit %v, output %s; want code %d naming %q", err, out, tc.code, tc.want)
			}
			if _, err := os.Stat(filepath.Join(dir, "data", "node-svid.pem")); !os.IsNotExist(err) {
				t.Fatal("a refused configuration wrote state")
			}
		})
	}
}
