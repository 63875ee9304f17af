package enforcer

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/palisade-id/palisade/ca/tlspolicy"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/sys/unix"
)

// Admission wire protocol, after the mutual TLS 1.3 handshake: the server
// sends one status byte, then (status OK) the admission expiry as
// big-endian Unix nanoseconds, then closes. The server closes first so the
// TIME_WAIT state lands on its side and the client can reuse its port.
const (
	statusOK     byte = 0
	statusDenied byte = 1

	handshakeTimeout = 5 * time.Second
	maxConcurrent    = 64
)

// PeerTable is what admission writes to; *Datapath implements it.
type PeerTable interface {
	PutPeer(PeerEntry) error
	DeletePeer(ifindex int, addr netip.Addr) error
	Peers() ([]PeerEntry, error)
	PolicyEntries() (map[PolicyKey]bool, error)
	SyncPolicy(map[PolicyKey]bool) error
	AdmissionIfindex(netip.AddrPort) (int, error)
}

// AdmitterOptions configures NewAdmitter.
type AdmitterOptions struct {
	Table    PeerTable
	SVID     x509svid.Source // this node's SVID (node attestation)
	Verifier *Verifier
	Policy   *Policy
	// AdmissionPort is both the listening port and the source port of
	// outgoing admissions, so the datapath passes both directions.
	AdmissionPort uint16
	// MaxAdmission caps an admission's lifetime below the SVID's not-after.
	MaxAdmission time.Duration
	// StatePath, if set, is a file where admissions are kept across
	// restarts (written atomically).
	StatePath string
	// Infrastructure lists services this node must reach before it has
	// any admission: the appliance (SVIDs, attestation, CRLs). Their
	// answers (for TCP: not a bare SYN) pass on Ifindexes; nothing from
	// them can open a TCP flow to this node. See docs/enforcer.md.
	Infrastructure []Service
	Ifindexes      []int
	// RevocationGrace keeps an existing admission while its revocation
	// status is unknown (no CRL fetched yet after a restart, or the last
	// one past its nextUpdate) for this long; 0 removes it at once. New
	// admissions always need a known status.
	RevocationGrace time.Duration
	Logger          *slog.Logger
}

// Service is a TCP or UDP endpoint.
type Service struct {
	netip.AddrPort
	Proto uint8 // ProtoTCP or ProtoUDP
}

// InfrastructureIdentity is the numeric identity of Infrastructure
// entries; admitted peers never get it.
const InfrastructureIdentity uint32 = 0xffffff00

// infrastructureLifetime: infrastructure entries do not expire in practice.
const infrastructureLifetime = 100 * 365 * 24 * time.Hour

type peerKey struct {
	ifindex int
	addr    netip.Addr
}

type admission struct {
	peerKey
	Verified
	expires      time.Time
	identity     uint32
	unknownSince time.Time // revocation status unknown since (zero: known)
}

// Admitter runs both sides of mutual admission and keeps the kernel's peer
// and policy maps in step with verified identities, the policy, expiry and
// revocation.
type Admitter struct {
	o   AdmitterOptions
	log *slog.Logger

	mu       sync.Mutex
	policy   *Policy
	admitted map[peerKey]*admission
	ids      numbering

	// State is written off the admission path: losing the newest records
	// to a crash only means those kernel entries are dropped at restart
	// (fail closed) and the peers re-admit.
	saveMu  sync.Mutex // serialises writers
	saveGen uint64     // bumped (under mu) on every change
	saved   uint64     // generation on disk (under saveMu)
}

// NewAdmitter checks options and adopts admissions from StatePath: kernel
// entries without a record (whose revocation could not be checked) are
// removed, and the rest are re-checked now.
func NewAdmitter(o AdmitterOptions) (*Admitter, error) {
	if o.Table == nil || o.SVID == nil || o.Verifier == nil || o.Policy == nil {
		return nil, fmt.Errorf("%w: admitter needs a table, SVID source, verifier and policy", ErrConfig)
	}
	if o.AdmissionPort == 0 || o.MaxAdmission <= 0 {
		return nil, fmt.Errorf("%w: admission port and max admission must be set", ErrConfig)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	a := &Admitter{o: o, log: o.Logger, policy: o.Policy, admitted: map[peerKey]*admission{}}
	if err := a.adopt(); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *Admitter) localID() (spiffeid.ID, error) {
	s, err := a.o.SVID.GetX509SVID()
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("enforcer: own SVID: %w", err)
	}
	return s.ID, nil
}

func (a *Admitter) tlsCert() (*tls.Certificate, error) {
	s, err := a.o.SVID.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("enforcer: own SVID: %w", err)
	}
	c := &tls.Certificate{PrivateKey: s.PrivateKey, Leaf: s.Certificates[0]}
	for _, x := range s.Certificates {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c, nil
}

// tlsConfig verifies the peer's SVID in VerifyConnection (chain, trust
// domain, revocation) and hands the result to *out.
func (a *Admitter) tlsConfig(server bool, out *Verified) *tls.Config {
	cfg := &tls.Config{
		// Verification is SPIFFE's, not hostname-based: done below.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			v, err := a.o.Verifier.Verify(cs.PeerCertificates)
			if err != nil {
				return err
			}
			*out = v
			return nil
		},
	}
	if server {
		cfg.ClientAuth = tls.RequireAnyClientCert
		cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return a.tlsCert() }
	} else {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return a.tlsCert() }
	}
	return tlspolicy.Apply(cfg)
}

func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

// ListenAdmission opens the admission listener on addr (host:port). The
// socket allows outgoing admissions to share the port.
func ListenAdmission(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: reusePort}
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("enforcer: admission listener: %w", err)
	}
	return ln, nil
}

// Serve accepts admissions on ln until ctx ends.
func (a *Admitter) Serve(ctx context.Context, ln net.Listener) error {
	go func() { <-ctx.Done(); ln.Close() }()
	sem := make(chan struct{}, maxConcurrent)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("enforcer: accept: %w", err)
		}
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			if err := a.serveConn(ctx, c); err != nil {
				a.log.Warn("admission refused", "remote", c.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

func (a *Admitter) serveConn(ctx context.Context, c net.Conn) error {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
	var v Verified
	tc := tls.Server(c, a.tlsConfig(true, &v))
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	remote, err := netip.ParseAddrPort(c.RemoteAddr().String())
	if err != nil {
		return err
	}
	resp := make([]byte, 9)
	exp, err := a.admitVerified(v, remote)
	if err != nil {
		resp[0] = statusDenied
		_, _ = tc.Write(resp[:1])
		return err
	}
	binary.BigEndian.PutUint64(resp[1:], uint64(exp.UnixNano()))
	if _, err := tc.Write(resp); err != nil {
		return fmt.Errorf("send admission: %w", err)
	}
	a.log.Info("peer admitted", "peer", v.ID.String(), "addr", remote.Addr().String(), "expires", exp)
	return tc.Close()
}

// Admit admits this node to the peer's agent at addr and, mutually, the
// peer here. It returns the earlier of the two expiries: re-admit before
// it. The TCP source port is the admission port.
func (a *Admitter) Admit(ctx context.Context, addr netip.AddrPort) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	local := &net.TCPAddr{Port: int(a.o.AdmissionPort)}
	if addr.Addr().Is4() {
		local.IP = net.IPv4zero
	}
	d := net.Dialer{LocalAddr: local, Control: reusePort}
	c, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return time.Time{}, fmt.Errorf("enforcer: dial %v: %w", addr, err)
	}
	defer c.Close()
	return a.admitConn(ctx, c, addr)
}

func (a *Admitter) admitConn(ctx context.Context, c net.Conn, addr netip.AddrPort) (time.Time, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	var v Verified
	tc := tls.Client(c, a.tlsConfig(false, &v))
	if err := tc.HandshakeContext(ctx); err != nil {
		return time.Time{}, fmt.Errorf("%w: handshake with %v: %w", ErrNotAdmitted, addr, err)
	}
	resp := make([]byte, 9)
	if _, err := io.ReadFull(tc, resp[:1]); err != nil {
		return time.Time{}, fmt.Errorf("%w: %v refused us: %w", ErrNotAdmitted, addr, err)
	}
	if resp[0] != statusOK {
		return time.Time{}, fmt.Errorf("%w: %v refused us (status %d)", ErrNotAdmitted, addr, resp[0])
	}
	if _, err := io.ReadFull(tc, resp[1:]); err != nil {
		return time.Time{}, fmt.Errorf("%w: %v: %w", ErrNotAdmitted, addr, err)
	}
	remoteExp := time.Unix(0, int64(binary.BigEndian.Uint64(resp[1:])))
	// Wait for the server's TCP FIN (after its close_notify) before
	// closing, so TIME_WAIT is on its side and our port can be reused.
	_, _ = io.Copy(io.Discard, tc)
	_, _ = io.Copy(io.Discard, c)
	localExp, err := a.admitVerified(v, addr)
	if err != nil {
		return remoteExp, err
	}
	if localExp.Before(remoteExp) {
		return localExp, nil
	}
	return remoteExp, nil
}

// admitVerified writes the peer entry keyed by the interface the datapath
// saw the admission connection on.
func (a *Admitter) admitVerified(v Verified, remote netip.AddrPort) (time.Time, error) {
	for _, ap := range a.o.Infrastructure {
		if ap.Addr().Unmap() == remote.Addr().Unmap() {
			return time.Time{}, fmt.Errorf("%w: %v is configured as infrastructure", ErrNotAdmitted, remote.Addr())
		}
	}
	ifindex, err := a.o.Table.AdmissionIfindex(remote)
	if err != nil {
		return time.Time{}, err
	}
	local, err := a.localID()
	if err != nil {
		return time.Time{}, err
	}
	exp := v.NotAfter
	if m := time.Now().Add(a.o.MaxAdmission); m.Before(exp) {
		exp = m
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	grants := a.policy.Grants(local, v.ID)
	if len(grants) == 0 {
		return time.Time{}, fmt.Errorf("%w: policy allows nothing between %s and %s", ErrNotAdmitted, v.ID, local)
	}
	id, err := a.identityLocked(grants)
	if err != nil {
		return time.Time{}, err
	}
	ad := &admission{peerKey: peerKey{ifindex, remote.Addr().Unmap()}, Verified: v, expires: exp, identity: id}
	if err := a.o.Table.PutPeer(PeerEntry{Ifindex: ifindex, Addr: ad.addr, Identity: id, Expires: exp}); err != nil {
		return time.Time{}, err
	}
	a.admitted[ad.peerKey] = ad
	a.saveLocked()
	return exp, nil
}

func signature(gs []Grant) string {
	var b strings.Builder
	for _, g := range gs {
		fmt.Fprintf(&b, "%d/%d/%d,", g.Dir, g.Proto, g.Port)
	}
	return b.String()
}

// numbering maps grant sets to numeric identities.
type numbering struct {
	bySig  map[string]uint32 // grant-set signature → identity
	grants map[uint32][]Grant
	last   uint32 // highest identity handed out
}

// alloc returns the identity of a grant set and its signature, numbering
// the set (fresh) if it has none yet.
func (n *numbering) alloc(gs []Grant) (id uint32, sig string, fresh bool) {
	sig = signature(gs)
	if known, ok := n.bySig[sig]; ok {
		return known, sig, false
	}
	if n.bySig == nil {
		n.bySig = map[string]uint32{}
		n.grants = map[uint32][]Grant{}
	}
	n.last++
	n.bySig[sig] = n.last
	n.grants[n.last] = gs
	return n.last, sig, true
}

// identityLocked maps a grant set to a numeric identity, writing its
// policy entries to the kernel the first time it is seen. Peers with the
// same grants share an identity, which keeps the policy map small.
func (a *Admitter) identityLocked(gs []Grant) (uint32, error) {
	id, sig, fresh := a.ids.alloc(gs)
	if !fresh {
		return id, nil
	}
	if err := a.o.Table.SyncPolicy(a.entriesLocked()); err != nil {
		delete(a.ids.bySig, sig)
		delete(a.ids.grants, id)
		return 0, err
	}
	return id, nil
}

func (a *Admitter) entriesLocked() map[PolicyKey]bool { return a.entriesFor(&a.ids) }

// entriesFor is the kernel policy map content for the identities in n.
func (a *Admitter) entriesFor(n *numbering) map[PolicyKey]bool {
	m := map[PolicyKey]bool{}
	for _, ap := range a.o.Infrastructure {
		m[PolicyKey{Identity: InfrastructureIdentity, Port: ap.Port(), Proto: ap.Proto, Dir: Reply}] = true
	}
	for id, gs := range n.grants {
		for _, g := range gs {
			m[PolicyKey{Identity: id, Port: g.Port, Proto: g.Proto, Dir: g.Dir}] = true
		}
	}
	return m
}

// SetPolicy swaps the policy: every admitted peer is re-evaluated;
// peers the new policy allows nothing are removed. If the kernel refuses
// the new entries, the old policy stays in force, unchanged.
func (a *Admitter) SetPolicy(p *Policy) error {
	local, err := a.localID()
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	applied, err := a.rebuildLocked(local, p)
	if !applied {
		// Free what was written of the new entries: a full map would
		// otherwise refuse the next admission's entries too.
		err = errors.Join(err, a.o.Table.SyncPolicy(a.entriesLocked()))
	}
	return err
}

// currentPolicy returns the policy being enforced.
func (a *Admitter) currentPolicy() *Policy {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.policy
}

// rebuildLocked makes p the policy, renumbering identities from scratch:
// new entries are added before peers move, stale ones removed last. The
// admitter's state changes (applied) only once the kernel holds old and
// new entries together, so admitted peers never point at identities it
// has forgotten.
func (a *Admitter) rebuildLocked(local spiffeid.ID, p *Policy) (applied bool, err error) {
	old := a.entriesLocked()
	// New numbers start above every old one, so old and new entries can
	// coexist while peers move over.
	ids := numbering{last: 1000 * (a.ids.last/1000 + 1)}
	keep := map[peerKey]uint32{}
	now := time.Now()
	for k, ad := range a.admitted {
		if !now.Before(ad.expires) {
			continue
		}
		if gs := p.Grants(local, ad.ID); len(gs) > 0 {
			keep[k], _, _ = ids.alloc(gs)
		}
	}
	union := a.entriesFor(&ids)
	maps.Copy(union, old)
	if err := a.o.Table.SyncPolicy(union); err != nil {
		return false, fmt.Errorf("enforcer: policy not applied, previous policy kept: %w", err)
	}
	a.policy, a.ids = p, ids
	var errs []error
	for k, ad := range a.admitted {
		id, ok := keep[k]
		reason := "no rule allows it"
		if ok {
			ad.identity = id
			err := a.o.Table.PutPeer(PeerEntry{Ifindex: k.ifindex, Addr: k.addr, Identity: id, Expires: ad.expires})
			if err == nil {
				continue
			}
			if !errors.Is(err, ErrExpired) {
				errs = append(errs, err)
			}
			reason = err.Error()
		} else if !now.Before(ad.expires) {
			// An admission that ran out is a removal, not a failure:
			// the datapath refuses to write a past expiry.
			reason = "expired"
		}
		errs = append(errs, a.o.Table.DeletePeer(k.ifindex, k.addr))
		delete(a.admitted, k)
		a.log.Info("admission removed", "peer", ad.ID.String(), "addr", k.addr.String(), "reason", reason)
	}
	errs = append(errs, a.o.Table.SyncPolicy(a.entriesLocked()))
	a.saveLocked()
	return true, errors.Join(errs...)
}

// Recheck removes admissions that expired, were revoked or banned, or
// whose revocation status has been unknown for longer than
// RevocationGrace. The revocation feed can call it after each update;
// RecheckLoop calls it periodically. It returns the number removed.
func (a *Admitter) Recheck() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	removed := 0
	now := time.Now()
	for k, ad := range a.admitted {
		reason := ""
		if !now.Before(ad.expires) {
			reason = "expired"
		} else if err := a.o.Verifier.Recheck(ad.Verified); err == nil {
			ad.unknownSince = time.Time{}
		} else if errors.Is(err, ErrRevocationUnknown) {
			if ad.unknownSince.IsZero() {
				ad.unknownSince = now
				a.log.Warn("revocation status unknown; admission kept for the grace period", "peer", ad.ID.String(), "grace", a.o.RevocationGrace, "err", err)
			}
			if now.Sub(ad.unknownSince) >= a.o.RevocationGrace {
				reason = err.Error()
			}
		} else {
			reason = err.Error()
		}
		if reason == "" {
			continue
		}
		if err := a.o.Table.DeletePeer(k.ifindex, k.addr); err != nil {
			a.log.Error("cannot remove admission", "peer", ad.ID.String(), "err", err)
			continue
		}
		delete(a.admitted, k)
		removed++
		a.log.Info("admission removed", "peer", ad.ID.String(), "addr", k.addr.String(), "reason", reason)
	}
	if removed > 0 {
		a.saveLocked()
	}
	return removed
}

// RecheckLoop runs Recheck every interval until ctx ends.
func (a *Admitter) RecheckLoop(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.Recheck()
		}
	}
}

// svidWatch is how often Maintain looks for a replaced local SVID.
const svidWatch = 250 * time.Millisecond

// Maintain admits this node to each peer before any workload traffic and
// re-admits at two thirds of the remaining admission time, retrying
// failures with backoff, until ctx ends. When the local SVID is replaced
// (renewal, or re-attestation after its revocation: peers have dropped the
// old admission) it re-admits at once.
func (a *Admitter) Maintain(ctx context.Context, peers []netip.AddrPort) {
	var wg sync.WaitGroup
	for _, p := range peers {
		wg.Go(func() {
			backoff := 500 * time.Millisecond
			for {
				used := a.svidSerial()
				exp, err := a.Admit(ctx, p)
				wait := backoff
				if err != nil {
					a.log.Warn("admission to peer failed", "peer", p.String(), "err", err)
					backoff = min(backoff*2, 30*time.Second)
					used = "" // a failed admission is retried on its backoff only
				} else {
					backoff = 500 * time.Millisecond
					wait = max(time.Until(exp)*2/3, time.Second)
				}
				if !a.awaitReadmission(ctx, wait, used) {
					return
				}
			}
		})
	}
	wg.Wait()
}

// awaitReadmission waits d, or until the local SVID is no longer the one
// with serial used (if used is set). It reports false when ctx ends.
func (a *Admitter) awaitReadmission(ctx context.Context, d time.Duration, used string) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	watch := time.NewTicker(svidWatch)
	defer watch.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-timer.C:
			return true
		case <-watch.C:
			if used != "" && a.svidSerial() != used {
				return true
			}
		}
	}
}

// svidSerial names the local SVID in use ("" when there is none).
func (a *Admitter) svidSerial() string {
	s, err := a.o.SVID.GetX509SVID()
	if err != nil || len(s.Certificates) == 0 {
		return ""
	}
	return s.Certificates[0].SerialNumber.Text(16)
}

// PeerID returns the SPIFFE ID admitted for (ifindex, addr), if any.
func (a *Admitter) PeerID(ifindex int, addr netip.Addr) (spiffeid.ID, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ad, ok := a.admitted[peerKey{ifindex, addr.Unmap()}]
	if !ok {
		return spiffeid.ID{}, false
	}
	return ad.ID, true
}

// Persistence: a JSON file rewritten atomically after every change.

type stateCert struct {
	Serial    string `json:"serial"`
	IssuerSKI string `json:"issuer_ski"`
}

// stateEntry records an admission. Identity and Expires are what its
// kernel entry holds: adopt compares them, since the record of a newer
// kernel entry (re-admission, address reused) may not have been written.
type stateEntry struct {
	Ifindex  int         `json:"ifindex"`
	Addr     netip.Addr  `json:"addr"`
	ID       string      `json:"spiffe_id"`
	Identity uint32      `json:"identity,omitempty"` // 0 (files before it): no match
	NotAfter time.Time   `json:"not_after"`
	Expires  time.Time   `json:"expires"`
	Certs    []stateCert `json:"certs"`
}

// expiryTolerance: a kernel expiry read back (CLOCK_BOOTTIME to wall
// clock) differs from the one written by the wall clock's adjustment in
// between. Two admissions of one address closer together than this are
// not told apart.
const expiryTolerance = time.Second

// matches reports whether kernel entry k is the one e was recorded for.
func (e stateEntry) matches(k PeerEntry) bool {
	return e.Identity != 0 && e.Identity == k.Identity && k.Expires.Sub(e.Expires).Abs() <= expiryTolerance
}

func (a *Admitter) saveLocked() {
	if a.o.StatePath == "" {
		return
	}
	a.saveGen++
	go a.Flush()
}

// Flush writes the admission records if they changed since the last
// write. Admissions schedule it themselves; call it before a planned exit.
func (a *Admitter) Flush() {
	if a.o.StatePath == "" {
		return
	}
	a.saveMu.Lock()
	defer a.saveMu.Unlock()
	a.mu.Lock()
	gen := a.saveGen
	if gen == a.saved {
		a.mu.Unlock()
		return
	}
	var st []stateEntry
	for _, ad := range a.admitted {
		e := stateEntry{Ifindex: ad.ifindex, Addr: ad.addr, ID: ad.ID.String(), Identity: ad.identity, NotAfter: ad.NotAfter, Expires: ad.expires}
		for _, c := range ad.Certs {
			e.Certs = append(e.Certs, stateCert{Serial: c.Serial.Text(16), IssuerSKI: hex.EncodeToString(c.IssuerSKI)})
		}
		st = append(st, e)
	}
	a.mu.Unlock()
	if err := writeFileAtomic(a.o.StatePath, st); err != nil {
		a.log.Error("cannot save admissions", "path", a.o.StatePath, "err", err)
		return
	}
	a.saved = gen
}

func writeFileAtomic(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".admissions-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// adopt reloads saved admissions, keeps those still in the kernel map,
// deletes kernel entries without a matching, unexpired record, then
// re-checks revocation.
func (a *Admitter) adopt() error {
	kernel, err := a.o.Table.Peers()
	if err != nil {
		return err
	}
	// The previous run's identities stay in force while adopted peers
	// move: the rebuild numbers above them and keeps their entries until
	// no peer points at them. Numbering from scratch would give an old
	// number another grant set while a peer still carries it.
	have, err := a.o.Table.PolicyEntries()
	if err != nil {
		return err
	}
	prev := numbering{bySig: map[string]uint32{}, grants: map[uint32][]Grant{}}
	for pk := range have {
		if pk.Identity != InfrastructureIdentity {
			prev.grants[pk.Identity] = append(prev.grants[pk.Identity], Grant{Port: pk.Port, Proto: pk.Proto, Dir: pk.Dir})
			prev.last = max(prev.last, pk.Identity)
		}
	}
	for _, k := range kernel {
		if k.Identity != InfrastructureIdentity {
			prev.last = max(prev.last, k.Identity)
		}
	}
	a.mu.Lock()
	a.ids = prev
	a.mu.Unlock()
	saved := map[peerKey]stateEntry{}
	if a.o.StatePath != "" {
		b, err := os.ReadFile(a.o.StatePath)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("enforcer: read admission state: %w", err)
		}
		if err == nil {
			var st []stateEntry
			if err := json.Unmarshal(b, &st); err != nil {
				// Unreadable state: forget it; the kernel entries go below.
				a.log.Error("admission state unreadable; dropping adopted admissions", "err", err)
			}
			for _, e := range st {
				saved[peerKey{e.Ifindex, e.Addr.Unmap()}] = e
			}
		}
	}
	now := time.Now()
	for _, k := range kernel {
		if k.Identity == InfrastructureIdentity {
			continue // rewritten below
		}
		key := peerKey{k.Ifindex, k.Addr}
		e, ok := saved[key]
		var (
			ad     *admission
			reason string
		)
		switch {
		case !ok:
			reason = "no record"
		case !e.matches(k):
			// A newer entry whose record was lost (crash before the state
			// write): the record's certificates are not the ones admitted.
			reason = "record is of another admission"
		case !now.Before(k.Expires):
			reason = "expired"
		default:
			if ad, err = e.admission(); err != nil {
				reason = err.Error()
			}
		}
		if reason != "" {
			lvl := slog.LevelWarn
			if reason == "expired" {
				lvl = slog.LevelInfo
			}
			a.log.Log(context.Background(), lvl, "removing kernel admission", "addr", k.Addr.String(), "ifindex", k.Ifindex, "reason", reason)
			if err := a.o.Table.DeletePeer(k.Ifindex, k.Addr); err != nil {
				return err
			}
			continue
		}
		ad.identity = k.Identity
		a.admitted[key] = ad
	}
	local, err := a.localID()
	if err != nil {
		return err
	}
	a.mu.Lock()
	_, err = a.rebuildLocked(local, a.policy)
	a.mu.Unlock()
	if err != nil {
		return err
	}
	if err := a.putInfrastructure(kernel); err != nil {
		return err
	}
	a.Recheck()
	// The rebuild renumbered every adopted entry: until the records say
	// so, a crash would make the next start drop them all.
	a.Flush()
	return nil
}

// putInfrastructure writes the infrastructure entries and removes stale
// ones (a service dropped from the config).
func (a *Admitter) putInfrastructure(kernel []PeerEntry) error {
	want := map[peerKey]bool{}
	exp := time.Now().Add(infrastructureLifetime)
	for _, ifindex := range a.o.Ifindexes {
		for _, ap := range a.o.Infrastructure {
			k := peerKey{ifindex, ap.Addr().Unmap()}
			want[k] = true
			if err := a.o.Table.PutPeer(PeerEntry{Ifindex: ifindex, Addr: k.addr, Identity: InfrastructureIdentity, Expires: exp}); err != nil {
				return err
			}
		}
	}
	for _, k := range kernel {
		if k.Identity == InfrastructureIdentity && !want[peerKey{k.Ifindex, k.Addr}] {
			if err := a.o.Table.DeletePeer(k.Ifindex, k.Addr); err != nil {
				return err
			}
		}
	}
	return nil
}

func (e stateEntry) admission() (*admission, error) {
	id, err := spiffeid.FromString(e.ID)
	if err != nil {
		return nil, err
	}
	ad := &admission{peerKey: peerKey{e.Ifindex, e.Addr.Unmap()}, expires: e.Expires,
		Verified: Verified{ID: id, NotAfter: e.NotAfter}}
	if len(e.Certs) == 0 {
		return nil, errors.New("no certificates recorded")
	}
	for _, c := range e.Certs {
		s, ok := new(big.Int).SetString(c.Serial, 16)
		ski, err := hex.DecodeString(c.IssuerSKI)
		if !ok || err != nil {
			return nil, errors.New("bad certificate reference")
		}
		ad.Certs = append(ad.Certs, CertRef{Serial: s, IssuerSKI: ski})
	}
	return ad, nil
}
