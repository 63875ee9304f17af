package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/palisade-id/palisade/attestor"
	"github.com/palisade-id/palisade/ca/nodeapi"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestNotBanned checks the node API's ban gate: a ban refuses, and a
// failed lookup is reported as unavailable (retryable), not as a ban.
func TestNotBanned(t *testing.T) {
	node := spiffeid.RequireFromString("spiffe://example.org" + nodeapi.NodePathPrefix + "n1")
	tests := []struct {
		name        string
		id          spiffeid.ID
		rec         attestor.NodeRecord
		err         error
		refused     bool
		unavailable bool
	}{
		{name: "attested node", id: node, rec: attestor.NodeRecord{ID: node.String()}},
		{name: "banned node", id: node, rec: attestor.NodeRecord{ID: node.String(), Banned: true, BanReason: "stolen"}, refused: true},
		{name: "node not attested", id: node, err: fmt.Errorf("node: %w", attestor.ErrNotFound)},
		{name: "store failure", id: node, err: errors.New("bolt: database not open"), refused: true, unavailable: true},
		{name: "not a node", id: spiffeid.RequireFromString("spiffe://example.org/ops"), err: errors.New("not looked up")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := notBanned(context.Background(), func(context.Context, string) (attestor.NodeRecord, error) {
				return tt.rec, tt.err
			}, tt.id)
			if (err != nil) != tt.refused || errors.Is(err, nodeapi.ErrGateUnavailable) != tt.unavailable {
				t.Fatalf("notBanned = %v, want refused=%v unavailable=%v", err, tt.refused, tt.unavailable)
			}
			if tt.rec.Banned && !strings.Contains(err.Error(), tt.rec.BanReason) {
				t.Fatalf("refusal %q does not name the ban reason", err)
			}
		})
	}
}

// The refusal counters are exported under their names, by reason, with
// the values the attestor counts.
func TestAttestorMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	var r attestor.Refusals
	r.HelloTimeout.Add(2)
	r.UnprovenEK.Unaudited.Add(3)
	registerAttestorMetrics(reg, &r)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			key := f.GetName()
			for _, l := range m.GetLabel() {
				key += "{" + l.GetValue() + "}"
			}
			got[key] = m.GetCounter().GetValue()
		}
	}
	for key, want := range map[string]float64{
		"palisade_attest_refused_unidentified_total{hello_timeout}": 2,
		"palisade_attest_refused_unidentified_total{session_open}":  0,
		"palisade_attest_refused_unknown_ek_total{no_entry}":        0,
		"palisade_attest_refused_unproven_ek_unaudited_total":       3,
		"palisade_attest_refused_unknown_ek_unaudited_total":        0,
	} {
		if v, ok := got[key]; !ok || v != want {
			t.Errorf("%s = %v (exported %v), want %v", key, v, ok, want)
		}
	}
}
