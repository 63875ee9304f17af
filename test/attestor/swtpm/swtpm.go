// Package swtpm runs a throw-away swtpm for tests: a TPM 2.0 manufactured
// by swtpm_setup with an RSA EK, its certificate from a private
// swtpm-localca in a temporary directory, and the raw command socket.
package swtpm

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-id/palisade/attestor/device"
	"github.com/palisade-id/palisade/attestor/verify"
	"github.com/palisade-id/palisade/test/testenv"
)

// Instance is a running swtpm.
type Instance struct {
	StateDir string
	Socket   string // raw TPM command socket (unix)
	CADir    string
	cmd      *exec.Cmd
}

// Manufacture creates TPM state with an EK certificate in a new temporary
// directory. Tests sharing one manufactured state may Start it repeatedly.
func Manufacture(t testing.TB) (stateDir, caDir string) {
	t.Helper()
	testenv.Require(t, "swtpm", "swtpm_setup", "swtpm_localca")
	base := t.TempDir()
	stateDir, caDir = filepath.Join(base, "state"), filepath.Join(base, "ca")
	for _, d := range []string{stateDir, caDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	localca := filepath.Join(base, "swtpm-localca.conf")
	opts := filepath.Join(base, "swtpm-localca.options")
	setup := filepath.Join(base, "swtpm_setup.conf")
	write(t, localca, fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", caDir))
	write(t, opts, "--platform-manufacturer Palisade\n--platform-version 2.1\n--platform-model test\n")
	localcaBin, _ := exec.LookPath("swtpm_localca")
	write(t, setup, fmt.Sprintf("create_certs_tool = %s\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n", localcaBin, localca, opts))
	out, err := exec.Command("swtpm_setup", "--tpm2", "--tpmstate", stateDir, "--config", setup,
		"--create-ek-cert", "--overwrite").CombinedOutput()
	if err != nil {
		t.Fatalf("swtpm_setup: %v\n%s", err, out)
	}
	return stateDir, caDir
}

// Start runs swtpm on stateDir until the test ends.
func Start(t testing.TB, stateDir, caDir string) *Instance {
	t.Helper()
	testenv.Require(t, "swtpm")
	// Unix socket paths must stay under 108 bytes: t.TempDir() may be longer.
	sockDir, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	in := &Instance{StateDir: stateDir, CADir: caDir, Socket: filepath.Join(sockDir, "tpm.sock")}
	var stderr bytes.Buffer
	in.cmd = exec.Command("swtpm", "socket", "--tpm2",
		"--server", "type=unixio,path="+in.Socket,
		"--ctrl", "type=unixio,path="+filepath.Join(sockDir, "ctrl.sock"),
		"--tpmstate", "dir="+stateDir, "--flags", "not-need-init,startup-clear")
	in.cmd.Stderr = &stderr
	if err := in.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = in.cmd.Process.Kill()
		_ = in.cmd.Wait()
	})
	// The socket file exists from bind(), before swtpm listens: wait until
	// a connection is accepted, not until the file appears.
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.Dial("unix", in.Socket)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("swtpm does not accept connections on %s: %v: %s", in.Socket, err, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return in
}

// New manufactures and starts a fresh TPM.
func New(t testing.TB) *Instance {
	t.Helper()
	state, ca := Manufacture(t)
	return Start(t, state, ca)
}

// Open connects and opens the TPM through package device, with opts if
// given (at most one) and the default device.Options otherwise. The TPM is
// closed when the test ends.
func (in *Instance) Open(t testing.TB, opts ...device.Options) *device.TPM {
	t.Helper()
	var o device.Options
	switch len(opts) {
	case 0:
	case 1:
		o = opts[0]
	default:
		t.Fatalf("swtpm: Open takes at most one device.Options, got %d", len(opts))
	}
	tr, err := device.DialSwtpm("unix", in.Socket)
	if err != nil {
		t.Fatal(err)
	}
	d, err := device.Open(tr, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// CACerts returns the swtpm-localca root and issuer certificates (the EK
// manufacturer chain).
func (in *Instance) CACerts(t testing.TB) (root, issuer *x509.Certificate) {
	t.Helper()
	return readCert(t, filepath.Join(in.CADir, "swtpm-localca-rootca-cert.pem")), readCert(t, filepath.Join(in.CADir, "issuercert.pem"))
}

// VerifyEKCert checks cert with verify.VerifyEKCert against the
// swtpm-localca chain (issuer as intermediate, root as the only root) and
// ek, at the current time.
func (in *Instance) VerifyEKCert(t testing.TB, cert *x509.Certificate, ek *verify.EK) error {
	t.Helper()
	root, issuer := in.CACerts(t)
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	inter.AddCert(issuer)
	_, err := verify.VerifyEKCert(cert, ek, inter, roots, time.Now())
	return err
}

// CAPEM returns the PEM of a localca certificate file ("root" or "issuer").
func (in *Instance) CAPEM(t testing.TB, which string) []byte {
	t.Helper()
	name := map[string]string{"root": "swtpm-localca-rootca-cert.pem", "issuer": "issuercert.pem"}[which]
	b, err := os.ReadFile(filepath.Join(in.CADir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

func write(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strings.TrimLeft(content, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
}
