// Package harness runs a real appliance for end-to-end tests: the built
// binaries, a throw-away SoftHSM2 token, a configuration on loopback ports
// (or on an address of a network namespace the test created), the key
// ceremony, and palisade-server as a child process (stopped by PID at
// cleanup).
package harness

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/test/softhsm"
	"github.com/palisade-id/palisade/test/testenv"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Bin returns the directory holding palisade, palisade-server and
// palisade-agent: $PALISADE_BIN (make test builds them), or a fresh build.
func Bin(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("PALISADE_BIN"); d != "" {
		return d
	}
	buildOnce.Do(func() {
		root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
		if err != nil {
			buildErr = fmt.Errorf("locate module: %w", err)
			return
		}
		binDir, buildErr = os.MkdirTemp("", "palisade-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+"/", "./cmd/...")
		cmd.Dir = strings.TrimSpace(string(root))
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Appliance is one appliance's files, token and (when started) server.
type Appliance struct {
	t           testing.TB
	Bin         string
	Dir         string
	Token       *softhsm.Token
	TrustDomain string
	ConfigPath  string
	Socket      string
	NodeAddr    string
	HTTPAddr    string
	MetricsAddr string
	LogPath     string

	netns string
	cmd   *exec.Cmd
	done  chan error
}

// Options adjust the generated configuration.
type Options struct {
	TrustDomain string
	// ExtraCA is appended, indented, under the ca: section.
	ExtraCA string
	// Extra is appended at the top level of the configuration.
	Extra string
	// ListenHost is the address the node API and the HTTP service (CRLs,
	// OCSP, revocation feed) listen on; default 127.0.0.1. Metrics stay on
	// loopback.
	ListenHost string
	// Netns runs palisade-server inside this existing network namespace
	// (`ip netns exec`), e.g. with ListenHost one of its addresses. The
	// admin socket is a file: the CLI reaches it from any namespace.
	Netns string
}

// New prepares an appliance (token and configuration) without the ceremony.
func New(t testing.TB, o Options) *Appliance {
	t.Helper()
	testenv.Require(t, "openssl")
	if o.TrustDomain == "" {
		o.TrustDomain = "e2e.palisade.internal"
	}
	if o.ListenHost == "" {
		o.ListenHost = "127.0.0.1"
	}
	a := &Appliance{t: t, Bin: Bin(t), Dir: t.TempDir(), TrustDomain: o.TrustDomain, netns: o.Netns}
	a.Token = softhsm.NewToken(t)
	// A short socket path: unix socket paths are limited to 108 bytes.
	sockDir, err := os.MkdirTemp("/tmp", "pal-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	a.Socket = filepath.Join(sockDir, "admin.sock")
	// Ports free on this namespace's loopback; a namespace of the test's
	// own has every port free.
	a.NodeAddr = net.JoinHostPort(o.ListenHost, fmt.Sprint(FreePort(t)))
	a.HTTPAddr = net.JoinHostPort(o.ListenHost, fmt.Sprint(FreePort(t)))
	a.MetricsAddr = fmt.Sprintf("127.0.0.1:%d", FreePort(t))
	a.LogPath = filepath.Join(a.Dir, "server.log")
	cfg := fmt.Sprintf(`data_dir: %s
hsm:
  token: %q
ca:
  trust_domain: %s
%s
admin:
  socket: %s
node_api:
  listen: %s
http:
  listen: %s
metrics:
  listen: %s
%s
`, filepath.Join(a.Dir, "data"), a.Token.TokenURI(), o.TrustDomain, indent(o.ExtraCA), a.Socket, a.NodeAddr, a.HTTPAddr, a.MetricsAddr, o.Extra)
	a.ConfigPath = filepath.Join(a.Dir, "server.yaml")
	if err := os.WriteFile(a.ConfigPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return a
}

func indent(s string) string {
	if s == "" {
		return ""
	}
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = "  " + l
	}
	return strings.Join(lines, "\n")
}

// DataDir is the configured data_dir.
func (a *Appliance) DataDir() string { return filepath.Join(a.Dir, "data") }

// Result is a finished CLI run.
type Result struct {
	Stdout, Stderr string
	Err            error
}

// CLI runs the palisade operator CLI against this appliance.
func (a *Appliance) CLI(args ...string) Result {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(a.Bin, "palisade"), args...)
	cmd.Env = append(os.Environ(), "PALISADE_ADMIN_SOCKET="+a.Socket)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return Result{Stdout: out.String(), Stderr: errb.String(), Err: err}
}

// MustCLI runs the CLI and fails the test that made the appliance on error.
func (a *Appliance) MustCLI(args ...string) string {
	a.t.Helper()
	return a.MustCLIFor(a.t, args...)
}

// MustCLIFor runs the CLI and fails t (a subtest, say) on error.
func (a *Appliance) MustCLIFor(t testing.TB, args ...string) string {
	t.Helper()
	r := a.CLI(args...)
	if r.Err != nil {
		t.Fatalf("palisade %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.Err, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// Ceremony runs `palisade ceremony init`.
func (a *Appliance) Ceremony() {
	a.t.Helper()
	a.MustCLI("ceremony", "init", "-config", a.ConfigPath)
}

// Start launches palisade-server and waits until it is healthy.
func (a *Appliance) Start() {
	a.t.Helper()
	if err := a.StartErr(); err != nil {
		a.t.Fatal(err)
	}
}

// StartErr is Start returning the failure (e.g. the server exited at once).
func (a *Appliance) StartErr() error {
	a.t.Helper()
	logf, err := os.OpenFile(a.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	args := []string{filepath.Join(a.Bin, "palisade-server"), "run", "-config", a.ConfigPath}
	if a.netns != "" {
		// ip execs the server after switching: the PID is the server's.
		args = append([]string{"ip", "netns", "exec", a.netns}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	a.cmd = cmd
	a.done = make(chan error, 1)
	go func() { a.done <- cmd.Wait(); logf.Close() }()
	a.t.Cleanup(func() { a.Stop() })
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-a.done:
			a.done <- err
			return fmt.Errorf("palisade-server exited: %v\n%s", err, a.Log())
		default:
		}
		if r := a.CLI("healthcheck"); r.Err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("palisade-server not healthy after 60s\n%s", a.Log())
}

// Log returns the server's log so far.
func (a *Appliance) Log() string {
	b, _ := os.ReadFile(a.LogPath)
	return string(b)
}

// Stop sends SIGTERM and waits for exit.
func (a *Appliance) Stop() {
	if a.cmd == nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(20 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
	a.cmd = nil
}

// Kill9 kills the server with SIGKILL, as a power cut would.
func (a *Appliance) Kill9() {
	if a.cmd == nil {
		return
	}
	_ = a.cmd.Process.Kill()
	<-a.done
	a.cmd = nil
}

// Running reports whether the server process is alive.
func (a *Appliance) Running() bool { return a.cmd != nil }

// ReadCerts reads the PEM certificates in path; none is a failure.
func ReadCerts(t testing.TB, path string) []*x509.Certificate {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out, err := ca.ParseCertsPEM(raw)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(out) == 0 {
		t.Fatalf("%s: no certificates", path)
	}
	return out
}
