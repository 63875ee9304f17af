package crl

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"time"
)

// Hand-rolled DER: the CRL encoder appends a million entries into one
// buffer, so it avoids encoding/asn1's reflection and per-value
// allocations.

const (
	tagBoolean     = 0x01
	tagInteger     = 0x02
	tagBitString   = 0x03
	tagOctetString = 0x04
	tagNull        = 0x05
	tagOID         = 0x06
	tagEnumerated  = 0x0a
	tagUTCTime     = 0x17
	tagGenTime     = 0x18
	tagSequence    = 0x30
)

// lenSize is the number of bytes the DER length of n takes.
func lenSize(n int) int {
	switch {
	case n < 0x80:
		return 1
	case n < 0x100:
		return 2
	case n < 0x10000:
		return 3
	case n < 0x1000000:
		return 4
	default:
		return 5
	}
}

func appendLen(b []byte, n int) []byte {
	switch {
	case n < 0x80:
		return append(b, byte(n))
	case n < 0x100:
		return append(b, 0x81, byte(n))
	case n < 0x10000:
		return append(b, 0x82, byte(n>>8), byte(n))
	case n < 0x1000000:
		return append(b, 0x83, byte(n>>16), byte(n>>8), byte(n))
	default:
		return append(b, 0x84, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
}

// tlv appends tag, length and content.
func tlv(b []byte, tag byte, content ...[]byte) []byte {
	n := 0
	for _, c := range content {
		n += len(c)
	}
	b = append(b, tag)
	b = appendLen(b, n)
	for _, c := range content {
		b = append(b, c...)
	}
	return b
}

// intContent is the DER content octets of a non-negative integer given as
// its unsigned big-endian magnitude.
func intContent(mag []byte) []byte {
	for len(mag) > 1 && mag[0] == 0 {
		mag = mag[1:]
	}
	if len(mag) == 0 {
		return []byte{0}
	}
	if mag[0]&0x80 != 0 {
		return append([]byte{0}, mag...)
	}
	return mag
}

func appendUint(b []byte, v uint64) []byte {
	var m [8]byte
	for i := 7; i >= 0; i-- {
		m[i] = byte(v)
		v >>= 8
	}
	return tlv(b, tagInteger, intContent(m[:]))
}

// timeLen is the encoded size of a Time (UTCTime until 2049, RFC 5280).
func timeLen(t time.Time) int {
	if t.UTC().Year() < 2050 {
		return 15
	}
	return 17
}

// appendTime appends t as an X.509 Time: UTCTime for 1950–2049,
// GeneralizedTime otherwise (RFC 5280 4.1.2.5).
func appendTime(b []byte, t time.Time) []byte {
	y := t.UTC().Year()
	return appendTimeAs(b, t, y < 1950 || y >= 2050)
}

// appendGenTime appends t as a GeneralizedTime, as OCSP always uses.
func appendGenTime(b []byte, t time.Time) []byte { return appendTimeAs(b, t, true) }

func appendTimeAs(b []byte, t time.Time, generalized bool) []byte {
	t = t.UTC()
	y, mo, d := t.Date()
	h, mi, s := t.Clock()
	d2 := func(b []byte, v int) []byte { return append(b, byte('0'+v/10), byte('0'+v%10)) }
	if generalized {
		b = append(b, tagGenTime, 15)
		b = d2(b, y/100)
	} else {
		b = append(b, tagUTCTime, 13)
	}
	for _, v := range []int{y % 100, int(mo), d, h, mi, s} {
		b = d2(b, v)
	}
	return append(b, 'Z')
}

// OIDs (encoded content octets).
var (
	oidCRLNumber       = []byte{0x55, 0x1d, 0x14}                                     // 2.5.29.20
	oidDeltaCRL        = []byte{0x55, 0x1d, 0x1b}                                     // 2.5.29.27
	oidAKI             = []byte{0x55, 0x1d, 0x23}                                     // 2.5.29.35
	oidFreshestCRL     = []byte{0x55, 0x1d, 0x2e}                                     // 2.5.29.46
	oidOCSPNonce       = []byte{0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02} // 1.3.6.1.5.5.7.48.1.2
	oidOCSPBasic       = []byte{0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01} // 1.3.6.1.5.5.7.48.1.1
	oidECDSAWithSHA256 = []byte{0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02}
	oidECDSAWithSHA384 = []byte{0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03}
	oidECDSAWithSHA512 = []byte{0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04}
	oidSHA256WithRSA   = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b}
	oidEd25519         = []byte{0x2b, 0x65, 0x70}
)

// extension appends Extension ::= SEQUENCE { extnID, critical DEFAULT FALSE, extnValue OCTET STRING }.
func extension(b []byte, oid []byte, critical bool, value []byte) []byte {
	var inner []byte
	inner = tlv(inner, tagOID, oid)
	if critical {
		inner = append(inner, tagBoolean, 1, 0xff)
	}
	inner = tlv(inner, tagOctetString, value)
	return tlv(b, tagSequence, inner)
}

// sigParams picks the signature algorithm for a signer's public key.
type sigParams struct {
	algID []byte      // encoded AlgorithmIdentifier
	hash  crypto.Hash // 0 for Ed25519 (signs the message itself)
}

func signatureParams(pub crypto.PublicKey) (sigParams, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return sigParams{tlv(nil, tagSequence, tlv(nil, tagOID, oidECDSAWithSHA256)), crypto.SHA256}, nil
		case elliptic.P384():
			return sigParams{tlv(nil, tagSequence, tlv(nil, tagOID, oidECDSAWithSHA384)), crypto.SHA384}, nil
		case elliptic.P521():
			return sigParams{tlv(nil, tagSequence, tlv(nil, tagOID, oidECDSAWithSHA512)), crypto.SHA512}, nil
		}
	case *rsa.PublicKey:
		return sigParams{tlv(nil, tagSequence, tlv(nil, tagOID, oidSHA256WithRSA), []byte{tagNull, 0}), crypto.SHA256}, nil
	case ed25519.PublicKey:
		return sigParams{tlv(nil, tagSequence, tlv(nil, tagOID, oidEd25519)), 0}, nil
	}
	return sigParams{}, fmt.Errorf("crl: unsupported signing key type %T", pub)
}

// sign signs tbs and returns the signature.
func (p sigParams) sign(s crypto.Signer, tbs []byte) ([]byte, error) {
	if p.hash == 0 {
		return s.Sign(rand.Reader, tbs, crypto.Hash(0))
	}
	h := p.hash.New()
	h.Write(tbs)
	return s.Sign(rand.Reader, h.Sum(nil), p.hash)
}

// bitString is a BIT STRING with no unused bits.
func bitString(b []byte, v []byte) []byte {
	b = append(b, tagBitString)
	b = appendLen(b, len(v)+1)
	b = append(b, 0)
	return append(b, v...)
}
