package ca_test

import (
	"bytes"
	"encoding/pem"
	"testing"
	"time"

	"github.com/palisade-id/palisade/ca"
	"github.com/palisade-id/palisade/test/testca"
)

func TestParseCertsPEM(t *testing.T) {
	tc := testca.New(t, "example.org")
	_, chain, _ := tc.MintX509SVID(t, "spiffe://example.org/w", time.Hour)
	good := ca.CertsPEM(chain)
	bad := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x03, 0x02, 0x01, 0x01}})
	key := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte{1, 2, 3}})
	for _, tt := range []struct {
		name    string
		in      []byte
		want    int
		wantErr bool
	}{
		{"chain round trip", good, len(chain), false},
		{"empty", nil, 0, false},
		{"text around blocks", append(append([]byte("comment\n"), good...), "trailer\n"...), len(chain), false},
		{"malformed certificate", append(append([]byte{}, good...), bad...), 0, true},
		{"not a certificate", append(append([]byte{}, key...), good...), 0, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ca.ParseCertsPEM(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if len(got) != tt.want {
				t.Fatalf("%d certificates, want %d", len(got), tt.want)
			}
			for i, c := range got {
				if !bytes.Equal(c.Raw, chain[i].Raw) {
					t.Fatalf("certificate %d differs", i)
				}
			}
		})
	}
}
