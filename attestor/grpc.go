package attestor

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/palisade-id/palisade/attestor/attestorpb"
	"github.com/palisade-id/palisade/attestor/verify"
	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/ca/tlspolicy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// ServerTLSConfig is the TLS configuration of the attestation endpoint:
// server authentication only (a node has no SVID before it attests), TLS 1.3
// with the Palisade suite. getCert serves the server's certificate.
func ServerTLSConfig(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	return tlspolicy.Apply(&tls.Config{GetCertificate: getCert, ClientAuth: tls.NoClientCert})
}

// NewGRPCServer returns a gRPC server with only the Attest service, over
// tlsCfg, with receive caps sized for the protocol.
func (s *Service) NewGRPCServer(tlsCfg *tls.Config, opts ...grpc.ServerOption) *grpc.Server {
	base := []grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(tlsCfg)),
		grpc.MaxRecvMsgSize(s.cfg.MaxMessageBytes),
		grpc.MaxConcurrentStreams(256),
	}
	gs := grpc.NewServer(append(base, opts...)...)
	attestorpb.RegisterAttestorServer(gs, s)
	return gs
}

// Attest implements attestorpb.AttestorServer.
func (s *Service) Attest(stream grpc.BidiStreamingServer[attestorpb.NodeMessage, attestorpb.ServerMessage]) error {
	ctx, cancel := context.WithTimeout(stream.Context(), s.cfg.SessionTimeout)
	defer cancel()
	addr := ""
	if p, ok := peer.FromContext(ctx); ok {
		addr = p.Addr.String()
	}
	ss := s.newSession(addr)
	ss.exclusive = true
	defer ss.release()
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	default:
		return s.finish(ctx, ss, ErrBusy)
	}
	// Each wait for the node has a deadline of its own (the hello's, then
	// the step's): a silent stream must not hold a slot for the whole
	// session.
	helloCtx, cancelHello := context.WithTimeout(ctx, s.cfg.HelloTimeout)
	defer cancelHello()
	for ss.state != done {
		rctx, cancelStep := helloCtx, context.CancelFunc(func() {})
		if ss.state != wantHello {
			rctx, cancelStep = context.WithTimeout(ctx, s.cfg.StepTimeout)
		}
		msg, err := recvCtx(rctx, stream)
		cancelStep()
		if err != nil {
			switch {
			case errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled:
				err = errors.Join(ErrBadMessage, errors.New("node closed the stream before the end"))
			case ss.state == wantHello && errors.Is(err, context.DeadlineExceeded):
				err = fmt.Errorf("%w: waited %v", ErrHelloTimeout, s.cfg.HelloTimeout)
			case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
				err = fmt.Errorf("%w: waited %v", ErrStepTimeout, s.cfg.StepTimeout)
			}
			return s.finish(ctx, ss, err)
		}
		reply, err := ss.step(ctx, msg)
		if err != nil {
			return s.finish(ctx, ss, err)
		}
		if ss.state == done {
			// Audit before the node sees its SVID.
			if err := s.audit(ctx, AuditAttestAccept, ss.actor(), ss.decision(nil)); err != nil {
				return status.Error(codes.Internal, err.Error())
			}
			s.log.Info("node attested", "node", ss.nodeID.String(), "class", ss.entry.Class, "peer", addr)
			// Before the reply: the node may attest again as soon as it
			// has it.
			ss.release()
		}
		if err := stream.Send(reply); err != nil {
			return err
		}
	}
	return nil
}

func recvCtx(ctx context.Context, stream grpc.BidiStreamingServer[attestorpb.NodeMessage, attestorpb.ServerMessage]) (*attestorpb.NodeMessage, error) {
	type res struct {
		m   *attestorpb.NodeMessage
		err error
	}
	ch := make(chan res, 1)
	go func() { m, err := stream.Recv(); ch <- res{m, err} }()
	select {
	case r := <-ch:
		return r.m, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Refusals of the Attest stream (beside those in errors.go).
var (
	// ErrStepTimeout: the node did not answer a challenge or quote request
	// within step_timeout.
	ErrStepTimeout = errors.New("attestor: no answer in time")
	// ErrSessionOpen: another session of the same EK is past its hello.
	ErrSessionOpen = errors.New("attestor: an attestation of this EK is already in progress")
)

// finish audits a refusal and maps it to a gRPC status. Refusals before
// the EK is known name no node and cost the peer nothing: they are counted
// and logged in aggregate (Service.Refusals), not audited one by one, so
// that a flood of empty streams cannot flood the audit log; so are those of
// an EK with a session open. Other refusals before the peer proved it holds
// the EK's TPM are audited within a budget (unknownek.go); those after it
// are all audited.
func (s *Service) finish(ctx context.Context, ss *session, err error) error {
	if ss.ek == nil || errors.Is(err, ErrSessionOpen) {
		s.refusals.count(err)
		s.log.Debug("attestation refused before the EK was known or with its session open", "peer", ss.peer, "reason", err)
		s.logRefusals()
		return status.Error(Code(err), err.Error())
	}
	// Audit on a context that survives the session deadline.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if !ss.activated && !s.withinBudget(actx, ss, err) {
		return status.Error(Code(err), err.Error())
	}
	_ = s.audit(actx, AuditAttestRefuse, ss.actor(), ss.decision(err))
	s.log.Warn("attestation refused", "actor", ss.actor(), "peer", ss.peer, "reason", err)
	return status.Error(Code(err), err.Error())
}

// withinBudget counts a refusal made before the peer proved it holds the
// EK's TPM (EKs and their certificates are public) and reports whether it
// may be audited one by one. One over the budget is left to the summary.
func (s *Service) withinBudget(ctx context.Context, ss *session, err error) bool {
	hash := ss.ek.HashHex()
	// An EK matched to no entry and not listed by hash is not in the
	// manifest; anyone can mint those.
	inManifest := ss.entry.ID != "" || s.manifest.Load().hasEK(hash)
	reason, unaudited := unknownEKReason(err), &s.refusals.UnknownEK.Unaudited
	counters := s.refusals.UnknownEK.ByReason()
	if inManifest {
		reason, unaudited = unprovenReason(err), &s.refusals.UnprovenEK.Unaudited
		counters = s.refusals.UnprovenEK.ByReason()
	}
	counters[reason].Add(1)
	if s.auditBudget.allow(s.deps.Now(), inManifest, reason, hash, ss.peer) {
		return true
	}
	unaudited.Add(1)
	s.log.Debug("attestation refused, over the audit budget", "actor", ss.actor(), "peer", ss.peer, "reason", err)
	_ = s.summarise(ctx, false) // a due summary need not wait for Run
	return false
}

// Code maps an attestation error to its gRPC status code.
func Code(err error) codes.Code {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, ErrHelloTimeout), errors.Is(err, ErrStepTimeout):
		return codes.DeadlineExceeded
	case errors.Is(err, ErrTooManyNonces), errors.Is(err, ErrBusy), errors.Is(err, ErrSessionOpen):
		return codes.ResourceExhausted
	case errors.Is(err, ErrBadMessage), errors.Is(err, verify.ErrMalformed), errors.Is(err, verify.ErrTooLarge):
		return codes.InvalidArgument
	case errors.Is(err, ErrIssue) && ca.IsRequestError(err):
		// The CA refused the node's request (its CSR), not itself.
		return codes.InvalidArgument
	case isRefusal(err):
		return codes.PermissionDenied
	default:
		return codes.Internal
	}
}

// Refusals counts the refusals that are not always audited one by one:
// those before the node's EK was known, those of an EK with a session
// open, and those before the peer proved it holds the EK's TPM.
type Refusals struct {
	Busy         atomic.Uint64 // no free session slot (ErrBusy)
	HelloTimeout atomic.Uint64 // no first message in time (ErrHelloTimeout)
	SessionOpen  atomic.Uint64 // a session of the same EK is open (ErrSessionOpen)
	Other        atomic.Uint64 // stream closed early, malformed hello or EK

	UnknownEK  UnknownEKRefusals  // EKs not in the manifest
	UnprovenEK UnprovenEKRefusals // manifest EKs before credential activation
}

func (r *Refusals) count(err error) {
	switch {
	case errors.Is(err, ErrBusy):
		r.Busy.Add(1)
	case errors.Is(err, ErrHelloTimeout):
		r.HelloTimeout.Add(1)
	case errors.Is(err, ErrSessionOpen):
		r.SessionOpen.Add(1)
	default:
		r.Other.Add(1)
	}
}

// Refusals returns the live refusal counters, for metrics.
func (s *Service) Refusals() *Refusals { return &s.refusals }

// refusalLogInterval spaces the aggregated warnings about refusals made
// before the EK was known.
const refusalLogInterval = time.Minute

// logRefusals warns with the running totals of Refusals' unaudited
// counters at most once per interval.
func (s *Service) logRefusals() {
	now := s.deps.Now().UnixNano()
	last := s.refusalLogged.Load()
	if last != 0 && now-last < int64(refusalLogInterval) || !s.refusalLogged.CompareAndSwap(last, now) {
		return
	}
	s.log.Warn("attestations refused before the EK was known or with its session open (totals)", "busy", s.refusals.Busy.Load(),
		"hello_timeout", s.refusals.HelloTimeout.Load(), "session_open", s.refusals.SessionOpen.Load(),
		"other", s.refusals.Other.Load())
}
