package pkcs11

import (
	"testing"

	"github.com/palisade-id/palisade/ca/keystore/keystoretest"
)

// TestContract runs the shared key store contract against SoftHSM2.
func TestContract(t *testing.T) {
	for _, alg := range []Algorithm{ECDSAP256, ECDSAP384} {
		t.Run(alg.String(), func(t *testing.T) {
			keystoretest.Run(t, func(t *testing.T) keystoretest.KeyStore { return openToken(t, WithAlgorithm(alg)) },
				keystoretest.NotFound(ErrKeyNotFound), keystoretest.Exists(ErrKeyExists),
				keystoretest.LabelPrefix("contract-"+alg.String()))
		})
	}
}
