package attestor

import (
	"context"
	"crypto/subtle"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/palisade-id/palisade/attestor/attestorpb"
	"github.com/palisade-id/palisade/attestor/verify"
	"github.com/palisade-id/palisade/ca"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
)

// MaxCSRSize caps the node's certificate request.
const MaxCSRSize = 4 << 10

type sessionState int

const (
	wantHello sessionState = iota
	wantActivation
	wantQuote
	done
)

// session is one attestation: a strict state machine fed one node message
// at a time. It is independent of gRPC so that it can be tested and
// benchmarked directly.
type session struct {
	s     *Service
	id    uint64
	state sessionState
	peer  string
	// exclusive sessions (those of Attest) claim their EK: one open
	// session per EK.
	exclusive bool
	claimed   string // EK hash claimed, released by release
	// activated: the peer proved it holds the EK's TPM.
	activated bool

	ek     *verify.EK
	ak     *verify.AK
	csr    []byte
	entry  ManifestEntry
	nodeID spiffeid.ID
	secret []byte
	policy *verify.Policy
	pcrs   []uint32
	nonce  []byte
}

func (s *Service) newSession(peer string) *session {
	return &session{s: s, id: s.sessions.Add(1), peer: peer}
}

// claimEK marks a session of the EK hashed h open, unless one is.
func (s *Service) claimEK(h string) bool {
	s.openMu.Lock()
	defer s.openMu.Unlock()
	if s.open[h] {
		return false
	}
	s.open[h] = true
	return true
}

// release ends the session's claim on its EK, if any.
func (ss *session) release() {
	if ss.claimed == "" {
		return
	}
	ss.s.openMu.Lock()
	delete(ss.s.open, ss.claimed)
	ss.s.openMu.Unlock()
	ss.claimed = ""
}

// actor names the node in audit records as precisely as known so far.
func (ss *session) actor() string {
	switch {
	case !ss.nodeID.IsZero():
		return ss.nodeID.String()
	case ss.ek != nil:
		return "ek:" + ss.ek.HashHex()
	default:
		return "peer:" + ss.peer
	}
}

// step consumes one node message and returns the server's reply. Once it
// returns an error the session is over.
func (ss *session) step(ctx context.Context, msg *attestorpb.NodeMessage) (*attestorpb.ServerMessage, error) {
	if size := proto.Size(msg); size > ss.s.cfg.MaxMessageBytes {
		return nil, fmt.Errorf("%w: message is %d bytes (max %d)", ErrBadMessage, size, ss.s.cfg.MaxMessageBytes)
	}
	switch m := msg.GetMsg().(type) {
	case *attestorpb.NodeMessage_Hello:
		if ss.state == wantHello {
			return ss.hello(ctx, m.Hello)
		}
	case *attestorpb.NodeMessage_Activation:
		if ss.state == wantActivation {
			return ss.activation(m.Activation)
		}
	case *attestorpb.NodeMessage_Quote:
		if ss.state == wantQuote {
			return ss.quote(ctx, m.Quote)
		}
	}
	return nil, fmt.Errorf("%w: %T in state %d", ErrBadMessage, msg.GetMsg(), ss.state)
}

func (ss *session) hello(ctx context.Context, h *attestorpb.Hello) (*attestorpb.ServerMessage, error) {
	now := ss.s.deps.Now()
	// The EK and the manifest come before anything else.
	ek, err := ss.s.ekCache.get(h.GetEkPublic(), verify.ParseEKPublic)
	if err != nil {
		return nil, fmt.Errorf("%w: EK: %w", ErrBadMessage, err)
	}
	ss.ek = ek
	var cert *x509.Certificate
	var inter *x509.CertPool
	if len(h.GetEkCert()) > 0 {
		if cert, err = verify.ParseEKCert(h.GetEkCert()); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadMessage, err)
		}
		if len(h.GetEkIntermediates()) > verify.MaxIntermediates {
			return nil, fmt.Errorf("%w: %d EK intermediates (max %d)", ErrBadMessage, len(h.GetEkIntermediates()), verify.MaxIntermediates)
		}
		for _, der := range h.GetEkIntermediates() {
			c, err := verify.ParseEKCert(der)
			if err != nil {
				return nil, fmt.Errorf("%w: intermediate: %w", ErrBadMessage, err)
			}
			if inter == nil {
				inter = x509.NewCertPool()
			}
			inter.AddCert(c)
		}
	}
	entry, err := ss.s.manifest.Load().admit(ek, cert, inter, now)
	if err != nil {
		return nil, err
	}
	ss.entry = entry
	if ss.exclusive {
		if !ss.s.claimEK(ek.HashHex()) {
			return nil, ErrSessionOpen
		}
		ss.claimed = ek.HashHex()
	}
	if ss.nodeID, err = verify.NodeID(ss.s.td, ek.Hash); err != nil {
		return nil, err
	}
	switch rec, err := ss.s.deps.Store.Node(ctx, ss.nodeID.String()); {
	case err == nil && rec.Banned:
		return nil, fmt.Errorf("%w: %s", ErrBanned, rec.BanReason)
	case err != nil && !isNotFound(err):
		return nil, fmt.Errorf("attestor: load node: %w", err)
	}

	if ss.ak, err = verify.ParseAKPublic(h.GetAkPublic()); err != nil {
		return nil, fmt.Errorf("%w: AK: %w", ErrBadMessage, err)
	}
	if err := checkCSR(h.GetCsr(), ss.s.td, ss.nodeID); err != nil {
		return nil, err
	}
	ss.csr = h.GetCsr()
	ss.policy = ss.s.policy.Load()
	if ss.policy == nil {
		return nil, fmt.Errorf("%w: no policy loaded", ErrNoPolicy)
	}
	if ss.pcrs, err = ss.policy.Selection(entry.Class); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoPolicy, err)
	}

	if ss.secret, err = ss.s.newSecret(); err != nil {
		return nil, fmt.Errorf("attestor: credential secret: %w", err)
	}
	ch, err := verify.MakeCredential(ss.s.deps.Rand, ek, ss.ak.Name, ss.secret)
	if err != nil {
		return nil, err
	}
	ss.state = wantActivation
	return &attestorpb.ServerMessage{Msg: &attestorpb.ServerMessage_Challenge{Challenge: &attestorpb.CredentialChallenge{
		IdObject: ch.IDObject, EncryptedSecret: ch.EncryptedSecret,
	}}}, nil
}

// checkCSR refuses, before any TPM round or record, a CSR the CA would
// refuse: it must pass ca.ParseCSR (signature, key type and size, one URI
// SAN in td), be DER and name the node's ID.
func checkCSR(der []byte, td spiffeid.TrustDomain, nodeID spiffeid.ID) error {
	if len(der) == 0 || len(der) > MaxCSRSize {
		return fmt.Errorf("%w: CSR is %d bytes (want 1..%d)", ErrBadMessage, len(der), MaxCSRSize)
	}
	if _, err := x509.ParseCertificateRequest(der); err != nil {
		return fmt.Errorf("%w: CSR: %v", ErrBadMessage, err)
	}
	csr, err := ca.ParseCSR(der, td)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadMessage, err)
	}
	if csr.ID != nodeID {
		return fmt.Errorf("%w: CSR names %s, want %s", ErrBadMessage, csr.ID, nodeID)
	}
	return nil
}

func (ss *session) activation(p *attestorpb.ActivationProof) (*attestorpb.ServerMessage, error) {
	if subtle.ConstantTimeCompare(p.GetSecret(), ss.secret) != 1 {
		return nil, ErrActivation
	}
	ss.activated = true
	nonce, err := ss.s.newNonce()
	if err != nil {
		return nil, fmt.Errorf("attestor: nonce: %w", err)
	}
	if err := ss.s.nonces.issue(nonce, ss.id, ss.s.deps.Now()); err != nil {
		return nil, err
	}
	ss.nonce = nonce
	ss.state = wantQuote
	return &attestorpb.ServerMessage{Msg: &attestorpb.ServerMessage_QuoteRequest{QuoteRequest: &attestorpb.QuoteRequest{
		Nonce: nonce, Pcrs: ss.pcrs,
	}}}, nil
}

func (ss *session) quote(ctx context.Context, q *attestorpb.QuoteResponse) (*attestorpb.ServerMessage, error) {
	values, err := pcrValues(q.GetPcrValues())
	if err != nil {
		return nil, err
	}
	quote, err := verify.VerifyQuoteSignature(ss.ak, q.GetQuoted(), q.GetSignature())
	if err != nil {
		return nil, err
	}
	if err := ss.s.nonces.consume(quote.Nonce(), ss.id, ss.s.deps.Now()); err != nil {
		return nil, err
	}
	if err := quote.CheckPCRs(ss.pcrs, values); err != nil {
		return nil, err
	}
	if raw := q.GetEventLog(); len(raw) > 0 {
		log, err := verify.ParseEventLog(raw)
		if err != nil {
			return nil, err
		}
		if err := log.Replay(values); err != nil {
			return nil, err
		}
	}
	if err := ss.policy.Check(ss.entry.Class, values); err != nil {
		return nil, err
	}

	// Record first: the ban check and the record are one transaction, so a
	// node banned mid-session gets nothing.
	now := ss.s.deps.Now()
	err = ss.s.deps.Store.UpdateNode(ctx, ss.nodeID.String(), func(rec *NodeRecord, exists bool) error {
		if rec.Banned {
			return fmt.Errorf("%w: %s", ErrBanned, rec.BanReason)
		}
		if !exists {
			rec.ID, rec.EKHash, rec.FirstAttested = ss.nodeID.String(), ss.ek.HashHex(), now
		}
		rec.Class, rec.LastAttested, rec.PolicyVersion = ss.entry.Class, now, ss.policy.Version
		rec.Attestations++
		return nil
	})
	if err != nil {
		return nil, err
	}
	chain, err := ss.s.deps.Issuer.IssueNodeSVID(ctx, ss.nodeID, ss.csr)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrIssue, err)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("%w: empty chain", ErrIssue)
	}
	// A ban may have landed between the record above and the issuance.
	if err := ss.s.afterIssue(ctx, ss.nodeID.String(), chain[0]); err != nil {
		return nil, err
	}
	ss.state = done
	return &attestorpb.ServerMessage{Msg: &attestorpb.ServerMessage_Result{Result: &attestorpb.Result{
		SpiffeId: ss.nodeID.String(), SvidChain: chain,
	}}}, nil
}

func pcrValues(in []*attestorpb.PCRValue) (map[uint32][]byte, error) {
	if len(in) > verify.MaxPCR+1 {
		return nil, fmt.Errorf("%w: %d PCR values", ErrBadMessage, len(in))
	}
	out := make(map[uint32][]byte, len(in))
	for _, v := range in {
		if v.GetIndex() > verify.MaxPCR || len(v.GetDigest()) != 32 {
			return nil, fmt.Errorf("%w: PCR value %d malformed", ErrBadMessage, v.GetIndex())
		}
		if _, dup := out[v.GetIndex()]; dup {
			return nil, fmt.Errorf("%w: PCR %d listed twice", ErrBadMessage, v.GetIndex())
		}
		out[v.GetIndex()] = v.GetDigest()
	}
	return out, nil
}

// decision is the audit payload of one attestation outcome.
type decision struct {
	Session  uint64    `json:"session"`
	Peer     string    `json:"peer,omitempty"`
	NodeID   string    `json:"node_id,omitempty"`
	EKHash   string    `json:"ek_hash,omitempty"`
	Class    string    `json:"class,omitempty"`
	Manifest string    `json:"manifest_entry,omitempty"`
	Policy   uint64    `json:"policy_version,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	At       time.Time `json:"at"`
}

func (ss *session) decision(reason error) decision {
	d := decision{Session: ss.id, Peer: ss.peer, Class: ss.entry.Class, Manifest: ss.entry.ID, At: ss.s.deps.Now()}
	if !ss.nodeID.IsZero() {
		d.NodeID = ss.nodeID.String()
	}
	if ss.ek != nil {
		d.EKHash = ss.ek.HashHex()
	}
	if ss.policy != nil {
		d.Policy = ss.policy.Version
	}
	if reason != nil {
		d.Reason = reason.Error()
	}
	return d
}
