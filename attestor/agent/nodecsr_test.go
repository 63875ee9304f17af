package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"strings"
	"testing"

	"github.com/palisade-id/palisade/attestor/verify"
	"github.com/palisade-id/palisade/attestor/verify/verifytest"
	"github.com/palisade-id/palisade/ca"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestNodeCSR(t *testing.T) {
	node, err := verifytest.NewNode()
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	ek, err := verify.ParseEKPublic(node.EKPublic)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		ekPub   []byte
		want    string
		wantErr bool
	}{
		{"EK public", node.EKPublic, "spiffe://example.org/palisade/node/" + ek.HashHex(), false},
		{"AK is not an EK", node.AKPublic, "", true},
		{"garbage", []byte{1, 2, 3}, "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, err := ExpectedNodeID(td, tc.ekPub)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if id.String() != tc.want {
				t.Fatalf("ID %s, want %s", id, tc.want)
			}
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			der, err := NewNodeCSR(key, id)
			if err != nil {
				t.Fatal(err)
			}
			// The CA's own CSR validation accepts it and reads the same ID.
			csr, err := ca.ParseCSR(der, td)
			if err != nil || csr.ID != id || !strings.HasPrefix(csr.ID.Path(), "/palisade/node/") {
				t.Fatalf("ca.ParseCSR: %v, %v", csr, err)
			}
		})
	}
}
