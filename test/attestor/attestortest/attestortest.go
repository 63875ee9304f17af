// Package attestortest holds test doubles and plumbing for attestor tests:
// a NodeIssuer built on testca, recording Auditor and Revoker, CAIssuer
// (the real CA, as palisade-server wires it through attestor/cawire, with
// hooks to interleave work), software nodes shared per test binary and their TPM adapter,
// golden PCR policies, a loopback TLS gRPC server and a Driver for the
// protocol's node side.
//
// Package attestor's own (package attestor) tests cannot use it: it imports
// attestor.
package attestortest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/palisade-id/palisade/attestor"
	"github.com/palisade-id/palisade/attestor/agent"
	"github.com/palisade-id/palisade/attestor/attestorpb"
	"github.com/palisade-id/palisade/attestor/verify/verifytest"
	"github.com/palisade-id/palisade/test/memca"
	"github.com/palisade-id/palisade/test/testca"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ServerID is the SPIFFE ID the test attestation endpoint presents, in
// ca's trust domain.
func ServerID(ca *testca.CA) spiffeid.ID {
	return spiffeid.RequireFromPath(spiffeid.RequireTrustDomainFromString(ca.TrustDomain), "/palisade/server")
}

// Issuer is a NodeIssuer signing with a testca intermediate.
type Issuer struct {
	CA  *testca.CA
	TTL time.Duration

	mu     sync.Mutex
	Issued []spiffeid.ID
	Fail   error
}

// IssueNodeSVID implements attestor.NodeIssuer.
func (i *Issuer) IssueNodeSVID(_ context.Context, id spiffeid.ID, csrDER []byte) ([][]byte, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.Fail != nil {
		return nil, i.Fail
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, err
	}
	// The CA's rule: exactly one URI SAN, the node's ID.
	if len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() {
		return nil, fmt.Errorf("%w: CSR names %v, want exactly %s", ErrCSRIdentity, csr.URIs, id)
	}
	u, _ := url.Parse(id.String())
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(i.TTL),
		URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, i.CA.Intermediate(), csr.PublicKey, i.CA.IssuerSigner())
	if err != nil {
		return nil, err
	}
	i.Issued = append(i.Issued, id)
	return [][]byte{der, i.CA.Intermediate().Raw}, nil
}

func serial() *big.Int {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[0] = b[0]&0x7f | 0x40
	return new(big.Int).SetBytes(b)
}

// Count returns how many SVIDs were issued.
func (i *Issuer) Count() int {
	i.mu.Lock()
	defer i.mu.Unlock()
	return len(i.Issued)
}

// Record is one audit record.
type Record = memca.Record

// Auditor records audit appends.
type Auditor struct{ memca.Recorder }

// Reason returns the refusal reason of the latest refusal record.
func (a *Auditor) Reason() string {
	r, ok := a.Last(attestor.AuditAttestRefuse)
	if !ok {
		return ""
	}
	v := fmt.Sprintf("%+v", r.Data)
	return v
}

// Revoker records ban revocations.
type Revoker struct {
	mu      sync.Mutex
	Calls   []string
	Serials []*big.Int // revoked one by one
}

// Revoke implements attestor.Revoker.
func (r *Revoker) Revoke(_ context.Context, serial *big.Int, _ int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Serials = append(r.Serials, serial)
	return nil
}

// RevokeNode implements attestor.Revoker.
func (r *Revoker) RevokeNode(_ context.Context, id string, _ int) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Calls = append(r.Calls, id)
	return 2, nil
}

// SoftTPM adapts a verifytest.Node to agent.TPM.
type SoftTPM struct {
	Node *verifytest.Node
	Cert []byte
}

var _ agent.TPM = SoftTPM{}

func (s SoftTPM) EKPublic() []byte { return s.Node.EKPublic }
func (s SoftTPM) EKCert() []byte   { return s.Cert }
func (s SoftTPM) AKPublic() []byte { return s.Node.AKPublic }
func (s SoftTPM) ActivateCredential(id, enc []byte) ([]byte, error) {
	return s.Node.Activate(s.Node.AKName, id, enc)
}
func (s SoftTPM) EventLog() ([]byte, error) {
	if len(s.Node.Log) == 0 {
		return nil, nil
	}
	return s.Node.EventLog(), nil
}
func (s SoftTPM) Quote(nonce []byte, pcrs []uint32) ([]byte, []byte, map[uint32][]byte, error) {
	return s.Node.Quote(nonce, pcrs)
}

// Serve runs svc on a loopback TLS listener with a server certificate from
// ca and returns a connected client; everything stops at test cleanup.
func Serve(t testing.TB, svc *attestor.Service, ca *testca.CA) attestorpb.AttestorClient {
	t.Helper()
	addr := Listen(t, svc, ca)
	cc, err := agent.Dial(addr, agent.ClientTLSConfig([]*x509.Certificate{ca.Root()}, ServerID(ca)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return attestorpb.NewAttestorClient(cc)
}

// Listen serves svc on a loopback TLS listener until the test ends and
// returns its address.
func Listen(t testing.TB, svc *attestor.Service, ca *testca.CA) string {
	t.Helper()
	cert := ServerCert(t, ca)
	gs := svc.NewGRPCServer(attestor.ServerTLSConfig(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil }))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	return lis.Addr().String()
}

// ServerCert issues the endpoint's X509-SVID (ServerID) from ca.
func ServerCert(t testing.TB, ca *testca.CA) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: testca.Serial(t), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{ServerID(ca).URL()}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Intermediate(), &key.PublicKey, ca.IssuerSigner())
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der, ca.Intermediate().Raw}, PrivateKey: key}
}

// CSR returns a fresh node key's CSR naming the node ID the appliance of
// trust domain td gives tpm's EK, as the agent builds it.
func CSR(t testing.TB, td string, tpm agent.TPM) []byte {
	t.Helper()
	id, err := agent.ExpectedNodeID(spiffeid.RequireTrustDomainFromString(td), tpm.EKPublic())
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := agent.NewNodeCSR(key, id)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// Clock is a settable clock.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock starts at the current time.
func NewClock() *Clock { return &Clock{now: time.Now()} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

var (
	// ErrInjected is a generic injected failure.
	ErrInjected = errors.New("attestortest: injected failure")
	// ErrCSRIdentity: Issuer refused a CSR not naming exactly the node ID.
	ErrCSRIdentity = errors.New("attestortest: CSR does not name the node ID")
)
