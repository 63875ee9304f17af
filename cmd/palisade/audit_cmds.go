package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
	"time"

	"github.com/palisade-id/palisade/ca/audit"
	"github.com/palisade-id/palisade/ca/store"
	"github.com/palisade-id/palisade/cmd/internal/appliance"
	"github.com/palisade-id/palisade/cmd/internal/config"
	"github.com/palisade-id/palisade/cmd/internal/operator"
)

func init() {
	register("audit reanchor", "accept a log restored behind its HSM anchor, recorded in the log (server stopped; -reason TEXT)", auditReanchor)
}

// auditReanchor is the supported way back after data_dir was restored from
// a backup: palisade-server refuses a log behind the checkpoint anchored in
// the HSM, for good. The log is verified with the server's trust; only its
// not reaching the anchor is accepted, and the rollback is recorded in it.
func auditReanchor(_ context.Context, e *env, args []string) error {
	fs := e.flags("audit reanchor")
	cfgPath := fs.String("config", "/etc/palisade/server.yaml", "palisade-server configuration: the log, and the HSM holding its anchor")
	reason := fs.String("reason", "", "why the log is behind its anchor, e.g. which backup was restored (recorded in the log; required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if strings.TrimSpace(*reason) == "" {
		return fmt.Errorf("%w: -reason is required: say why the audit log is behind its anchor (it is recorded in the log)", errUsage)
	}
	if len(*reason) > audit.MaxReasonBytes {
		return fmt.Errorf("%w: -reason is %d bytes, limit %d", errUsage, len(*reason), audit.MaxReasonBytes)
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		return err
	}
	r, err := appliance.ReanchorAudit(cfg, operator.Actor(), *reason)
	switch {
	case errors.Is(err, audit.ErrNothingToReanchor):
		return fmt.Errorf("%w; nothing changed, palisade-server starts on the log as it is", err)
	case errors.Is(err, store.ErrLocked), errors.Is(err, syscall.EWOULDBLOCK):
		return fmt.Errorf("%w; stop palisade-server first", err)
	case err != nil:
		return fmt.Errorf("%w; nothing was reanchored", err)
	}
	w := e.stdout
	fmt.Fprintf(w, "Reanchored audit log %s: record %d (%s) by %s.\n", cfg.Audit.Path, r.Seq, audit.KindReanchored, r.Actor)
	fmt.Fprintf(w, "  previous anchor: checkpoint %d, hash %s\n", r.Previous.Seq, r.Previous.Hash)
	fmt.Fprintf(w, "  log head:        seq %d, hash %s\n", r.Head.Seq, r.Head.Hash)
	fmt.Fprintf(w, "  missing:         %s\n", missing(r))
	fmt.Fprintf(w, "  new anchor:      checkpoint %d, hash %s\n", r.Checkpoint.Seq, r.Checkpoint.Hash)
	if r.Head.Seq > r.LastCheckpoint {
		fmt.Fprintf(w, "  note: records %d..%d followed the last signed checkpoint; only this reanchor vouches for them\n", r.LastCheckpoint+1, r.Head.Seq)
	}
	return nil
}

func missing(r audit.Reanchoring) string {
	if r.Missing == 0 {
		return "the log holds another record at the anchored seq: " + r.Problem
	}
	return fmt.Sprintf("%d anchored record(s), seq %d..%d of the old history, are not in the log", r.Missing, r.Head.Seq+1, r.Previous.Seq)
}

// printReanchors shows every reanchoring verify found: the log was rolled
// back behind its anchor there, and an auditor must see by whom.
func printReanchors(w io.Writer, rep audit.Report) {
	for _, r := range rep.Reanchors {
		fmt.Fprintf(w, "REANCHORED seq %d at %s by %s: the log no longer reached checkpoint %d (hash %.16s…); continued from seq %d; %s; reason: %q\n",
			r.Seq, r.Time.Format(time.RFC3339), r.Actor, r.Previous.Seq, r.Previous.Hash, r.Head.Seq, missing(r), r.Reason)
	}
	if rep.ReanchorsOmitted > 0 {
		fmt.Fprintf(w, "(%d more reanchorings not shown)\n", rep.ReanchorsOmitted)
	}
}
