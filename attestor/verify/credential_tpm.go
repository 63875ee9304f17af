package verify

import (
	"io"

	"github.com/google/go-tpm/tpm2"
)

func tpm2CreateCredential(rand io.Reader, ek *EK, akName, secret []byte) ([]byte, []byte, error) {
	return tpm2.CreateCredential(rand, ek.encap, akName, secret)
}
