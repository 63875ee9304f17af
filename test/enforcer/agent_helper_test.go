//go:build integration

package enforcer

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/palisade-id/palisade/enforcer"
	"github.com/palisade-id/palisade/test/netns"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"gopkg.in/yaml.v3"
)

// The test binary doubles as the agent: started with PALISADE_TEST_AGENT
// set (under `ip netns exec`), it runs enforcer.Agent like
// cmd/palisade-agent would, with file-backed revocation and ban lists.
func TestMain(m *testing.M) {
	if cfg := os.Getenv("PALISADE_TEST_AGENT"); cfg != "" {
		if err := agentMain(cfg); err != nil {
			fmt.Fprintln(os.Stderr, "agent:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// fileList is a revocation/ban list re-read on every question, as a
// stand-in for the revocation package's CRL cache.
type fileList struct{ path string }

func (f fileList) has(s string) (bool, error) {
	b, err := os.ReadFile(f.path)
	if os.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == s {
			return true, nil
		}
	}
	return false, nil
}

func (f fileList) Revoked(serial *big.Int, _ []byte) (bool, error) { return f.has(serial.Text(16)) }
func (f fileList) Banned(id spiffeid.ID) (bool, error)             { return f.has(id.String()) }

func agentMain(cfgPath string) error {
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var cfg enforcer.Config
	if err := dec.Decode(&cfg); err != nil {
		return err
	}
	cfg.SetDefaults()
	dir := filepath.Dir(cfgPath)
	svid, err := x509svid.Load(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid.key"))
	if err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	a, err := enforcer.NewAgent(ctx, cfg, enforcer.Deps{
		SVID:       svid,
		Revocation: fileList{filepath.Join(dir, "revoked")},
		Bans:       fileList{filepath.Join(dir, "banned")},
		Logger:     log,
	})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "ready"), nil, 0o600); err != nil {
		return err
	}
	return a.Run(ctx)
}

// agentProc is an agent process in a namespace.
type agentProc struct {
	dir string
	cfg enforcer.Config
	ns  *netns.NS
	cmd *exec.Cmd
}

func writeSVID(t testing.TB, dir string, chain []*x509.Certificate, key crypto.Signer) {
	t.Helper()
	var certs bytes.Buffer
	for _, c := range chain {
		_ = pem.Encode(&certs, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "svid.pem"), certs.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "svid.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newAgent(t testing.TB, ns *netns.NS, cfg enforcer.Config, chain []*x509.Certificate, key crypto.Signer) *agentProc {
	t.Helper()
	a := &agentProc{dir: t.TempDir(), cfg: cfg, ns: ns}
	writeSVID(t, a.dir, chain, key)
	// Never the defaults under /var/lib: each agent's state is its own.
	a.cfg.StateDir = filepath.Join(a.dir, "state")
	a.cfg.FlowLog = filepath.Join(a.dir, "flows.jsonl")
	a.writeConfig(t)
	t.Cleanup(func() { a.kill9(t) })
	return a
}

func (a *agentProc) writeConfig(t testing.TB) {
	t.Helper()
	b, err := yaml.Marshal(a.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(a.dir, "config.yaml"), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func (a *agentProc) start(t testing.TB) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(filepath.Join(a.dir, "ready"))
	logf, err := os.OpenFile(filepath.Join(a.dir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	a.cmd = exec.Command("ip", "netns", "exec", a.ns.Name, exe, "-test.run=^$")
	a.cmd.Env = append(os.Environ(), "PALISADE_TEST_AGENT="+filepath.Join(a.dir, "config.yaml"))
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- a.cmd.Wait() }()
	deadline := time.After(20 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(a.dir, "ready")); err == nil {
			// Re-arm the reaper for kill9.
			go func() { <-exited }()
			return
		}
		select {
		case err := <-exited:
			a.cmd = nil
			t.Fatalf("agent exited: %v\n%s", err, a.log())
		case <-deadline:
			t.Fatalf("agent not ready\n%s", a.log())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (a *agentProc) log() string {
	b, _ := os.ReadFile(filepath.Join(a.dir, "agent.log"))
	return string(b)
}

// kill9 kills the agent by PID, without any chance to clean up.
func (a *agentProc) kill9(t testing.TB) {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGKILL)
	for i := 0; i < 200; i++ {
		if err := a.cmd.Process.Signal(syscall.Signal(0)); err != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	a.cmd = nil
}

func (a *agentProc) revoke(t testing.TB, serial *big.Int) {
	t.Helper()
	appendLine(t, filepath.Join(a.dir, "revoked"), serial.Text(16))
}

func (a *agentProc) ban(t testing.TB, id string) {
	t.Helper()
	appendLine(t, filepath.Join(a.dir, "banned"), id)
}

func appendLine(t testing.TB, path, line string) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line + "\n"); err != nil {
		t.Fatal(err)
	}
}

func (a *agentProc) flows(t testing.TB) []enforcer.FlowRecord {
	t.Helper()
	f, err := os.Open(a.cfg.FlowLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := enforcer.ReadFlowLog(f)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}
