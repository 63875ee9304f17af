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
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	default:
		return s.finish(ctx, ss, ErrBusy)
	}
	// The first message has a deadline of its own: an idle stream must not
	// hold a slot for the whole session.
	helloCtx, cancelHello := context.WithTimeout(ctx, s.cfg.HelloTimeout)
	defer cancelHello()
	for ss.state != done {
		rctx := ctx
		if ss.state == wantHello {
			rctx = helloCtx
		}
		msg, err := recvCtx(rctx, stream)
		if err != nil {
			switch {
			case errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled:
				err = errors.Join(ErrBadMessage, errors.New("node closed the stream before the end"))
			case ss.state == wantHello && errors.Is(err, context.DeadlineExceeded):
				err = fmt.Errorf("%w: waited %v", ErrHelloTimeout, s.cfg.HelloTimeout)
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

// finish audits a refusal and maps it to a gRPC status. Refusals before
// the EK is known name no node and cost the peer nothing: they are counted
// and logged in aggregate (Service.Refusals), not audited one by one, so
// that a flood of empty streams cannot flood the audit log; refusals of EKs
// not in the manifest are audited within a budget (unknownek.go).
func (s *Service) finish(ctx context.Context, ss *session, err error) error {
	if ss.ek == nil {
		s.refusals.count(err)
		s.log.Debug("attestation refused before the EK was known", "peer", ss.peer, "reason", err)
		s.logRefusals()
		return status.Error(Code(err), err.Error())
	}
	// Audit on a context that survives the session deadline.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	// An EK not in the manifest (matched to no entry, not listed by hash)
	// costs its sender nothing: its refusals are audited within a budget.
	if ss.entry.ID == "" && !s.manifest.Load().hasEK(ss.ek.HashHex()) {
		reason := unknownEKReason(err)
		s.refusals.UnknownEK.ByReason()[reason].Add(1)
		if !s.unknownEKs.allow(s.deps.Now(), reason, ss.ek.HashHex(), ss.peer) {
			s.refusals.UnknownEK.Unaudited.Add(1)
			s.log.Debug("attestation refused, over the unknown EK audit budget", "actor", ss.actor(), "peer", ss.peer, "reason", err)
			_ = s.summarise(actx, false) // a due summary need not wait for Run
			return status.Error(Code(err), err.Error())
		}
	}
	_ = s.audit(actx, AuditAttestRefuse, ss.actor(), ss.decision(err))
	s.log.Warn("attestation refused", "actor", ss.actor(), "peer", ss.peer, "reason", err)
	return status.Error(Code(err), err.Error())
}

// Code maps an attestation error to its gRPC status code.
func Code(err error) codes.Code {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, ErrHelloTimeout):
		return codes.DeadlineExceeded
	case errors.Is(err, ErrTooManyNonces), errors.Is(err, ErrBusy):
		return codes.ResourceExhausted
	case errors.Is(err, ErrBadMessage), errors.Is(err, verify.ErrMalformed), errors.Is(err, verify.ErrTooLarge):
		return codes.InvalidArgument
	case isRefusal(err):
		return codes.PermissionDenied
	default:
		return codes.Internal
	}
}

// Refusals counts the refusals that are not always audited one by one:
// those before the node's EK was known, and those of EKs not in the
// manifest.
type Refusals struct {
	Busy         atomic.Uint64 // no free session slot (ErrBusy)
	HelloTimeout atomic.Uint64 // no first message in time (ErrHelloTimeout)
	Other        atomic.Uint64 // stream closed early, malformed hello or EK

	UnknownEK UnknownEKRefusals
}

func (r *Refusals) count(err error) {
	switch {
	case errors.Is(err, ErrBusy):
		r.Busy.Add(1)
	case errors.Is(err, ErrHelloTimeout):
		r.HelloTimeout.Add(1)
	default:
		r.Other.Add(1)
	}
}

// Refusals returns the live refusal counters, for metrics.
func (s *Service) Refusals() *Refusals { return &s.refusals }

// refusalLogInterval spaces the aggregated warnings about refusals made
// before the EK was known.
const refusalLogInterval = time.Minute

// logRefusals warns with the running totals at most once per interval.
func (s *Service) logRefusals() {
	now := s.deps.Now().UnixNano()
	last := s.refusalLogged.Load()
	if last != 0 && now-last < int64(refusalLogInterval) || !s.refusalLogged.CompareAndSwap(last, now) {
		return
	}
	s.log.Warn("attestations refused before the EK was known (totals)", "busy", s.refusals.Busy.Load(),
		"hello_timeout", s.refusals.HelloTimeout.Load(), "other", s.refusals.Other.Load())
}
