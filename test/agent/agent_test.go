//go:build integration

package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-id/palisade/attestor"
	"github.com/palisade-id/palisade/attestor/device"
	"github.com/palisade-id/palisade/attestor/verify"
	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/admin"
	"github.com/palisade-id/palisade/ca/nodeapi"
	"github.com/palisade-id/palisade/ca/nodeapi/nodev1"
	"github.com/palisade-id/palisade/test/attestor/attestortest"
	"github.com/palisade-id/palisade/test/attestor/swtpm"
	"github.com/palisade-id/palisade/test/harness"
	"github.com/palisade-id/palisade/test/testca"
	"github.com/palisade-id/palisade/test/testenv"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var quotedPCRs = []uint32{0, 1, 2, 3, 4, 5, 6, 7}

// node is one swtpm-backed node with its palisade-agent configuration.
type node struct {
	tpm      *swtpm.Instance
	ekHash   string
	pcrs     map[uint32][]byte
	dir      string
	cfgPath  string
	agentBin string
	runs     int
}

// newNode starts a swtpm, reads its EK hash and PCRs (then lets go of it:
// the agent opens it itself) and writes an agent configuration for a.
func newNode(t *testing.T, a *harness.Appliance, extra string) *node {
	t.Helper()
	n := &node{tpm: swtpm.New(t), dir: t.TempDir(), agentBin: filepath.Join(a.Bin, "palisade-agent")}
	tr, err := device.DialSwtpm("unix", n.tpm.Socket)
	if err != nil {
		t.Fatal(err)
	}
	d, err := device.Open(tr, device.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ek, err := verify.ParseEKPublic(d.EKPublic())
	if err != nil {
		t.Fatal(err)
	}
	n.ekHash = ek.HashHex()
	if n.pcrs, err = d.ReadPCRs(quotedPCRs); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	issuer := filepath.Join(n.dir, "ek-issuer.pem")
	writeFile(t, issuer, n.tpm.CAPEM(t, "issuer"))
	n.cfgPath = filepath.Join(n.dir, "agent.yaml")
	writeFile(t, n.cfgPath, []byte(fmt.Sprintf(`attestation:
  server: %s
  trust_domain: %s
  trust_bundle: %s
  tpm: swtpm:unix:%s
  ek_intermediates: [%s]
data_dir: %s
log:
  level: debug
%s`, a.NodeAddr, a.TrustDomain, filepath.Join(a.DataDir(), "bundle.pem"), n.tpm.Socket, issuer,
		filepath.Join(n.dir, "data"), extra)))
	return n
}

// id is the node SVID's SPIFFE ID, derived here from the EK independently
// of the server.
func (n *node) id(a *harness.Appliance) string {
	return "spiffe://" + a.TrustDomain + "/palisade/node/" + n.ekHash
}

// admit puts the node's EK manufacturer root in the manifest and its
// current PCRs in the golden policy, through the operator CLI.
func (n *node) admit(t *testing.T, a *harness.Appliance) { admitNodes(t, a, n) }

// admitNodes puts each node's EK manufacturer root in the manifest and sets
// one golden policy (class worker) allowing each node's current PCRs.
func admitNodes(t *testing.T, a *harness.Appliance, nodes ...*node) {
	t.Helper()
	var pcrs []map[uint32][]byte
	for _, n := range nodes {
		root := filepath.Join(n.dir, "ek-root.pem")
		writeFile(t, root, n.tpm.CAPEM(t, "root"))
		a.MustCLI("manifest", "add", "-ek", root, "-class", "worker", "-comment", "swtpm localca")
		pcrs = append(pcrs, n.pcrs)
	}
	policy := filepath.Join(nodes[0].dir, "pcr-policy.yaml")
	writeFile(t, policy, attestortest.PCRPolicy(1, pcrs...))
	a.MustCLI("pcrpolicy", "set", "-file", policy)
}

// attest runs `palisade-agent attest` into a new directory.
func (n *node) attest(t *testing.T) (dir, stdout, stderr string, err error) {
	t.Helper()
	n.runs++
	dir = filepath.Join(n.dir, fmt.Sprintf("svid-%d", n.runs))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.agentBin, "attest", "-config", n.cfgPath, "-write", dir)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return dir, out.String(), errb.String(), err
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeCerts(t *testing.T, path string, certs ...*x509.Certificate) {
	t.Helper()
	writeFile(t, path, ca.CertsPEM(certs))
}

func applianceBundle(t *testing.T, a *harness.Appliance) *x509bundle.Bundle {
	t.Helper()
	b, err := x509bundle.Load(spiffeid.RequireTrustDomainFromString(a.TrustDomain), filepath.Join(a.DataDir(), "bundle.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// verifySVID checks dir/svid.pem with go-spiffe against the appliance's
// bundle and with `openssl verify`, and that key.pem is its key.
func verifySVID(t *testing.T, a *harness.Appliance, dir, wantID string) *x509svid.SVID {
	t.Helper()
	svid, err := x509svid.Load(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatalf("load SVID: %v", err)
	}
	if svid.ID.String() != wantID {
		t.Fatalf("SVID is %s, want %s", svid.ID, wantID)
	}
	id, _, err := x509svid.Verify(svid.Certificates, applianceBundle(t, a))
	if err != nil || id.String() != wantID {
		t.Fatalf("go-spiffe verify: %s %v", id, err)
	}
	if !svid.PrivateKey.Public().(*ecdsa.PublicKey).Equal(svid.Certificates[0].PublicKey) {
		t.Fatal("key.pem is not the SVID's key")
	}
	leaf, inter := filepath.Join(dir, "leaf.pem"), filepath.Join(dir, "inter.pem")
	writeCerts(t, leaf, svid.Certificates[0])
	writeCerts(t, inter, svid.Certificates[1:]...)
	out, err := exec.Command("openssl", "verify", "-CAfile", filepath.Join(a.DataDir(), "bundle.pem"),
		"-untrusted", inter, "-purpose", "sslclient", leaf).CombinedOutput()
	if err != nil || !strings.Contains(string(out), leaf+": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	return svid
}

// nodeClient dials the node API presenting svid.
func nodeClient(t *testing.T, a *harness.Appliance, svid *x509svid.SVID) nodev1.NodeClient {
	t.Helper()
	roots := applianceBundle(t, a).X509Authorities()
	cc, err := nodeapi.Dial(a.NodeAddr, spiffeid.RequireTrustDomainFromString(a.TrustDomain), roots,
		func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
			for _, x := range svid.Certificates {
				c.Certificate = append(c.Certificate, x.Raw)
			}
			return c, nil
		})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return nodev1.NewNodeClient(cc)
}

func signWorkload(t *testing.T, c nodev1.NodeClient, id string) (*nodev1.SignX509SVIDResponse, error) {
	t.Helper()
	csr, _ := testca.CSR(t, id)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return c.SignX509SVID(ctx, &nodev1.SignX509SVIDRequest{Csr: csr})
}

// ocspStatus asks the appliance's OCSP responder about certPath with
// openssl, verifying the response against the bundle.
func ocspStatus(t *testing.T, a *harness.Appliance, issuer, certPath string) string {
	t.Helper()
	out, err := exec.Command("openssl", "ocsp", "-issuer", issuer, "-cert", certPath,
		"-url", "http://"+a.HTTPAddr+"/ocsp", "-CAfile", filepath.Join(a.DataDir(), "bundle.pem"), "-resp_text").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl ocsp: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "Response verify OK") {
		t.Fatalf("openssl did not verify the OCSP response:\n%s", out)
	}
	return string(out)
}

// TestNodeLifecycle walks one node through refusal, admission, workload
// issuance over the node API, a ban and what the ban revokes.
func TestNodeLifecycle(t *testing.T) {
	testenv.Require(t, "openssl", "swtpm", "softhsm2-util")
	a := harness.New(t, harness.Options{})
	a.Ceremony()
	a.Start()
	n := newNode(t, a, "")
	nodeID := n.id(a)

	t.Run("EK not in manifest refused", func(t *testing.T) {
		dir, stdout, stderr, err := n.attest(t)
		if err == nil {
			t.Fatalf("attested before the manifest admits the EK: %s", stdout)
		}
		if !strings.Contains(stderr, attestor.ErrNotInManifest.Error()) {
			t.Fatalf("refusal does not name the manifest: %s", stderr)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Fatalf("a refused attestation wrote %s (%v)", dir, err)
		}
	})

	n.admit(t, a)
	var first *x509svid.SVID
	var firstDir string
	t.Run("attests and gets its node SVID", func(t *testing.T) {
		dir, stdout, stderr, err := n.attest(t)
		if err != nil {
			t.Fatalf("attest: %v\n%s\nserver log:\n%s", err, stderr, a.Log())
		}
		if strings.TrimSpace(stdout) != nodeID {
			t.Fatalf("attest printed %q, want %s", stdout, nodeID)
		}
		first, firstDir = verifySVID(t, a, dir, nodeID), dir
		// bundle.pem (from the node API) holds the appliance's roots.
		got := harness.ReadCerts(t, filepath.Join(dir, "bundle.pem"))
		want := applianceBundle(t, a).X509Authorities()
		if len(got) != len(want) || !got[0].Equal(want[0]) {
			t.Fatalf("bundle.pem: %d roots, want %d", len(got), len(want))
		}
		if fi, _ := os.Stat(filepath.Join(dir, "key.pem")); fi.Mode().Perm() != 0o600 {
			t.Fatalf("key.pem mode %v", fi.Mode().Perm())
		}
		if ocsp := ocspStatus(t, a, filepath.Join(dir, "inter.pem"), filepath.Join(dir, "leaf.pem")); !strings.Contains(ocsp, "leaf.pem: good") {
			t.Fatalf("fresh node SVID not good:\n%s", ocsp)
		}
	})
	if first == nil {
		t.FailNow()
	}

	webID := "spiffe://" + a.TrustDomain + "/workload/web"
	otherID := "spiffe://" + a.TrustDomain + "/workload/db"
	a.MustCLI("entry", "create", "-spiffeID", webID, "-parentID", nodeID, "-selector", "unix:uid:1000")
	a.MustCLI("entry", "create", "-spiffeID", otherID, "-parentID", "spiffe://"+a.TrustDomain+"/palisade/node/someone-else", "-selector", "unix:uid:1001")
	client := nodeClient(t, a, first)

	t.Run("node SVID authorises workload issuance", func(t *testing.T) {
		resp, err := signWorkload(t, client, webID)
		if err != nil {
			t.Fatalf("SignX509SVID: %v", err)
		}
		var chain []*x509.Certificate
		for _, der := range resp.GetCertChain() {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			chain = append(chain, c)
		}
		id, _, err := x509svid.Verify(chain, applianceBundle(t, a))
		if err != nil || id.String() != webID {
			t.Fatalf("workload SVID: %s %v", id, err)
		}
		// An entry parented by another node is not this node's to obtain.
		if _, err := signWorkload(t, client, otherID); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("entry of another node: %v, want PermissionDenied", err)
		}
	})

	t.Run("banned node refused and its SVID revoked", func(t *testing.T) {
		var ban admin.BanResponse
		if err := json.Unmarshal([]byte(a.MustCLI("node", "ban", "-node", nodeID, "-reason", "e2e: decommissioned")), &ban); err != nil {
			t.Fatal(err)
		}
		// The node SVID and the workload SVID issued under it.
		if !ban.Node.Banned || ban.Revoked != 2 {
			t.Fatalf("ban: %+v", ban)
		}
		_, stdout, stderr, err := n.attest(t)
		if err == nil {
			t.Fatalf("banned node attested: %s", stdout)
		}
		if !strings.Contains(stderr, attestor.ErrBanned.Error()) {
			t.Fatalf("refusal does not name the ban: %s", stderr)
		}
		leaf := filepath.Join(firstDir, "leaf.pem")
		var ocsp string
		// The revocation is durable before ban returns; OCSP answers are
		// re-signed by the responder, give it a moment.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			ocsp = ocspStatus(t, a, filepath.Join(firstDir, "inter.pem"), leaf)
			if strings.Contains(ocsp, leaf+": revoked") || time.Now().After(deadline) {
				break
			}
		}
		if !strings.Contains(ocsp, leaf+": revoked") {
			t.Fatalf("node SVID not revoked after the ban:\n%s", ocsp)
		}
		if _, err := signWorkload(t, client, webID); err == nil {
			t.Fatal("node API served a banned node's revoked SVID")
		} else if c := status.Code(err); c != codes.PermissionDenied && c != codes.Unauthenticated {
			t.Fatalf("node API refusal %v, want PermissionDenied or Unauthenticated", err)
		}
	})

	t.Run("unbanned node attests again; the old SVID stays revoked", func(t *testing.T) {
		var rec attestor.NodeRecord
		if err := json.Unmarshal([]byte(a.MustCLIFor(t, "node", "unban", "-node", nodeID, "-reason", "e2e: returned")), &rec); err != nil {
			t.Fatal(err)
		}
		if rec.Banned {
			t.Fatalf("unban: %+v", rec)
		}
		if r := a.CLI("node", "unban", "-node", nodeID, "-reason", "again"); r.Err == nil || !strings.Contains(r.Stderr, "not banned") {
			t.Fatalf("second unban: %v %s", r.Err, r.Stderr)
		}
		dir, _, stderr, err := n.attest(t)
		if err != nil {
			t.Fatalf("unbanned node refused: %v\n%s", err, stderr)
		}
		verifySVID(t, a, dir, nodeID)
		if ocsp := ocspStatus(t, a, filepath.Join(dir, "inter.pem"), filepath.Join(dir, "leaf.pem")); !strings.Contains(ocsp, "leaf.pem: good") {
			t.Fatalf("new node SVID not good:\n%s", ocsp)
		}
		if ocsp := ocspStatus(t, a, filepath.Join(firstDir, "inter.pem"), filepath.Join(firstDir, "leaf.pem")); !strings.Contains(ocsp, "leaf.pem: revoked") {
			t.Fatalf("the SVID revoked by the ban came back:\n%s", ocsp)
		}
	})
}
