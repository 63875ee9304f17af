package pkcs11

import (
	"crypto/elliptic"
	"fmt"
)

// Algorithm is a key type the Token generates.
type Algorithm int

const (
	ECDSAP256 Algorithm = iota
	ECDSAP384
)

// ParseAlgorithm accepts the configuration names "ecdsa-p256" and
// "ecdsa-p384".
func ParseAlgorithm(s string) (Algorithm, error) {
	switch s {
	case "ecdsa-p256":
		return ECDSAP256, nil
	case "ecdsa-p384":
		return ECDSAP384, nil
	}
	return 0, fmt.Errorf("pkcs11: unknown algorithm %q (want ecdsa-p256 or ecdsa-p384)", s)
}

func (a Algorithm) String() string {
	switch a {
	case ECDSAP256:
		return "ecdsa-p256"
	case ECDSAP384:
		return "ecdsa-p384"
	}
	return fmt.Sprintf("Algorithm(%d)", int(a))
}

func (a Algorithm) curve() (elliptic.Curve, error) {
	switch a {
	case ECDSAP256:
		return elliptic.P256(), nil
	case ECDSAP384:
		return elliptic.P384(), nil
	}
	return nil, fmt.Errorf("pkcs11: unsupported algorithm %v", a)
}
