package enforcer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Deps are what the agent gets from other parts of Palisade.
type Deps struct {
	// SVID is this node's X509-SVID (node attestation), rotated by its owner.
	SVID x509svid.Source
	// Revocation answers CRL/OCSP status (revocation package).
	Revocation RevocationChecker
	// Bans is optional.
	Bans BanChecker
	// Bundle overrides Config.TrustBundle when set.
	Bundle x509bundle.Source
	Logger *slog.Logger
}

// Agent runs the enforcer on a node: datapath, admission server,
// pre-admission to peers, revocation re-checks and the flow log.
type Agent struct {
	cfg   Config
	deps  Deps
	log   *slog.Logger
	dp    *Datapath
	adm   *Admitter
	local spiffeid.ID
	ln    net.Listener
}

// NewAgent loads (or adopts) the pinned datapath, configures it, adopts
// saved admissions, attaches to the interfaces and opens the admission
// listener. cfg must have passed SetDefaults and Validate. On error the
// already pinned state is left as it was: enforcement stays on.
func NewAgent(ctx context.Context, cfg Config, deps Deps) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.SVID == nil || deps.Revocation == nil {
		return nil, fmt.Errorf("%w: agent needs an SVID source and a revocation checker", ErrConfig)
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	if deps.Bundle == nil {
		b, err := x509bundle.Load(td, cfg.TrustBundle)
		if err != nil {
			return nil, fmt.Errorf("%w: trust_bundle: %w", ErrConfig, err)
		}
		deps.Bundle = b
	}
	pol, err := LoadPolicy(cfg.PolicyFile)
	if err != nil {
		return nil, err
	}
	svid, err := deps.SVID.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("enforcer: own SVID: %w", err)
	}
	mode, _ := ParseMode(cfg.Mode)
	a := &Agent{cfg: cfg, deps: deps, log: deps.Logger, local: svid.ID}
	a.dp, err = OpenDatapath(DatapathOptions{PinDir: cfg.PinDir})
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Agent, error) {
		if a.ln != nil {
			a.ln.Close()
		}
		a.dp.Close()
		return nil, err
	}
	if err := a.dp.SetConfig(mode, cfg.AdmissionPort); err != nil {
		return fail(err)
	}
	var ifindexes []int
	for _, name := range cfg.Interfaces {
		ifc, err := net.InterfaceByName(name)
		if err != nil {
			return fail(fmt.Errorf("enforcer: interface %q: %w", name, err))
		}
		ifindexes = append(ifindexes, ifc.Index)
	}
	infra, _ := cfg.InfrastructureAddrs()
	a.adm, err = NewAdmitter(AdmitterOptions{
		Table: a.dp, SVID: deps.SVID, Policy: pol,
		Verifier:      &Verifier{TrustDomain: td, Bundle: deps.Bundle, Revocation: deps.Revocation, Bans: deps.Bans},
		AdmissionPort: cfg.AdmissionPort, MaxAdmission: cfg.MaxAdmission,
		StatePath:      filepath.Join(cfg.StateDir, "admissions.json"),
		Infrastructure: infra, Ifindexes: ifindexes, RevocationGrace: cfg.RevocationGrace,
		Logger: deps.Logger,
	})
	if err != nil {
		return fail(err)
	}
	for i, ifindex := range ifindexes {
		how, err := a.dp.Attach(ifindex, AttachMode(cfg.Attach))
		if err != nil {
			return fail(err)
		}
		a.log.Info("enforcing", "interface", cfg.Interfaces[i], "hook", string(how), "mode", cfg.Mode)
		if cfg.OnDemandAdmission != nil && *cfg.OnDemandAdmission {
			if _, err := a.dp.AttachEgress(ifindex, AttachMode(cfg.Attach)); err != nil {
				return fail(err)
			}
		}
	}
	a.ln, err = ListenAdmission(ctx, cfg.listenAddr())
	if err != nil {
		return fail(err)
	}
	return a, nil
}

// Admitter exposes admission (status; Recheck for the revocation feed).
func (a *Agent) Admitter() *Admitter { return a.adm }

// AdmissionAddr is the bound admission listener address.
func (a *Agent) AdmissionAddr() net.Addr { return a.ln.Addr() }

// ReloadPolicy re-reads the policy file and applies it; a bad file
// changes nothing.
func (a *Agent) ReloadPolicy() error {
	p, err := LoadPolicy(a.cfg.PolicyFile)
	if err != nil {
		return err
	}
	return a.adm.SetPolicy(p)
}

// Run serves admissions, admits this node to its peers, re-checks
// revocation and writes the flow log until ctx ends. It then closes file
// descriptors only: pinned program, maps and links keep enforcing.
func (a *Agent) Run(ctx context.Context) error {
	peers, _ := a.cfg.PeerAddrs()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Add(5)
	go func() { defer wg.Done(); a.admitOnDemand(ctx) }()
	go func() { defer wg.Done(); errc <- a.adm.Serve(ctx, a.ln) }()
	go func() { defer wg.Done(); a.adm.RecheckLoop(ctx, a.cfg.RecheckInterval) }()
	go func() { defer wg.Done(); a.adm.Maintain(ctx, peers) }()
	go func() { defer wg.Done(); errc <- a.recordFlows(ctx) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		cancel()
	}
	wg.Wait()
	a.adm.Flush()
	a.dp.Close()
	return err
}

// onDemandBackoff is how long a destination that failed admission is not
// asked again (it may have no agent at all).
const onDemandBackoff = 10 * time.Second

// admitOnDemand admits this node to destinations the egress program saw
// a SYN to without an admission.
func (a *Agent) admitOnDemand(ctx context.Context) {
	if a.cfg.OnDemandAdmission == nil || !*a.cfg.OnDemandAdmission {
		return
	}
	rr, err := a.dp.AdmitRequests()
	if err != nil {
		a.log.Error("on-demand admission disabled", "err", err)
		return
	}
	go func() { <-ctx.Done(); rr.Close() }()
	infra, _ := a.cfg.InfrastructureAddrs()
	var mu sync.Mutex
	busy := map[netip.Addr]time.Time{} // in flight or backing off until
	for {
		q, err := rr.Read()
		if err != nil {
			return
		}
		if slices.ContainsFunc(infra, func(ap Service) bool { return ap.Addr().Unmap() == q.Addr }) {
			continue
		}
		mu.Lock()
		until, ok := busy[q.Addr]
		if ok && time.Now().Before(until) {
			mu.Unlock()
			continue
		}
		busy[q.Addr] = time.Now().Add(handshakeTimeout)
		mu.Unlock()
		go func() {
			_, err := a.adm.Admit(ctx, netip.AddrPortFrom(q.Addr, a.cfg.AdmissionPort))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				a.log.Warn("on-demand admission failed", "peer", q.Addr.String(), "port", q.DstPort, "err", err)
				busy[q.Addr] = time.Now().Add(onDemandBackoff)
				return
			}
			a.log.Info("admitted on demand", "peer", q.Addr.String(), "port", q.DstPort)
			delete(busy, q.Addr)
		}()
	}
}

// recordFlows turns kernel flow events into flow log records.
func (a *Agent) recordFlows(ctx context.Context) error {
	fr, err := a.dp.Flows()
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); fr.Close() }()
	var w io.Writer = io.Discard
	if a.cfg.FlowLog != "" {
		rw, err := openRotating(a.cfg.FlowLog, a.cfg.FlowLogMaxBytes)
		if err != nil {
			return err
		}
		defer rw.Close()
		w = rw
	}
	for {
		ev, err := fr.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("enforcer: read flows: %w", err)
		}
		if err := WriteFlowRecord(w, a.record(a.adm.currentPolicy(), ev)); err != nil {
			a.log.Error("flow log write failed", "err", err)
		}
	}
}

// rotatingFile appends to path and moves it to path.1 (replacing the
// previous one) once it exceeds max bytes: the flow log stays bounded.
type rotatingFile struct {
	path string
	max  int64
	f    *os.File
	size int64
	// torn: the file ends inside a line (a short write, a crash), so the
	// next write starts with '\n' rather than extend that line.
	torn bool
}

func openRotating(path string, max int64) (*rotatingFile, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("enforcer: flow log: %w", err)
	}
	r := &rotatingFile{path: path, max: max}
	return r, r.open()
}

func (r *rotatingFile) open() error {
	f, err := os.OpenFile(r.path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("enforcer: flow log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("enforcer: flow log: %w", err)
	}
	r.f, r.size, r.torn = f, st.Size(), false
	if r.size > 0 {
		// Unreadable: assume torn; a blank line costs nothing.
		last := []byte{0}
		_, err := f.ReadAt(last, r.size-1)
		r.torn = err != nil || last[0] != '\n'
	}
	return nil
}

func (r *rotatingFile) Write(b []byte) (int, error) {
	if r.max > 0 && r.size+int64(len(b)) > r.max && r.size > 0 {
		r.f.Close()
		if err := os.Rename(r.path, r.path+".1"); err != nil {
			return 0, fmt.Errorf("enforcer: rotate flow log: %w", err)
		}
		if err := r.open(); err != nil {
			return 0, err
		}
	}
	p := b
	if r.torn {
		p = append([]byte{'\n'}, b...)
	}
	n, err := r.f.Write(p)
	r.size += int64(n)
	if n > 0 {
		r.torn = p[n-1] != '\n'
	}
	if len(p) > len(b) {
		n = max(n-1, 0) // the separator is not b's
	}
	return n, err
}

func (r *rotatingFile) Close() error { return r.f.Close() }

// record orients an event like a policy rule (initiator first).
func (a *Agent) record(pol *Policy, ev FlowEvent) FlowRecord {
	r := FlowRecord{Time: ev.Time, To: a.local.String(), FromAddr: ev.Src, ToAddr: ev.Dst,
		Port: ev.DstPort, Proto: protoName(ev.Proto), Verdict: ev.Verdict.String(), Reason: ev.Reason.String(), Ifindex: ev.Ifindex}
	if ev.Proto == ProtoICMP || ev.Proto == ProtoICMPv6 {
		r.Port = 0
	}
	peer, ok := a.adm.PeerID(ev.Ifindex, ev.Src)
	if !ok || ev.Identity == 0 {
		return r
	}
	r.From = peer.String()
	if ev.Verdict == VerdictPass && len(pol.Allows(peer, a.local, r.Port, ev.Proto)) == 0 {
		// Passed through a Reply entry: local opened it to peer.
		r.From, r.To = a.local.String(), peer.String()
		r.FromAddr, r.ToAddr = ev.Dst, ev.Src
		if r.Port != 0 {
			r.Port = ev.SrcPort
		}
	}
	return r
}
