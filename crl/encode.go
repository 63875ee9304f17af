package crl

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"math/big"
	"time"
)

// CRLTemplate describes one CRL to encode.
type CRLTemplate struct {
	Issuer     *x509.Certificate
	Signer     crypto.Signer
	Number     uint64
	ThisUpdate time.Time
	NextUpdate time.Time
	// DeltaBase, when non-zero, makes this a delta CRL (critical Delta CRL
	// Indicator naming the base CRL number).
	DeltaBase uint64
	// FreshestURL, for a full CRL, adds the Freshest CRL extension (where
	// the delta lives).
	FreshestURL string
}

// Walk feeds revoked entries to an encoder; fn must not retain serial.
type Walk func(fn func(serial *big.Int, revokedAt time.Time, reason int) error) error

// EncodeCRL builds and signs an X.509 v2 CRL in one pass over walk, with
// memory proportional to the encoded size (≈ 50 bytes per entry).
// sizeHint, if known, is the expected number of entries.
func EncodeCRL(t CRLTemplate, sizeHint int, walk Walk) ([]byte, error) {
	if t.Issuer == nil || t.Signer == nil {
		return nil, fmt.Errorf("crl: issuer certificate and signer are required")
	}
	sp, err := signatureParams(t.Signer.Public())
	if err != nil {
		return nil, err
	}
	// Fixed TBSCertList fields before revokedCertificates.
	var head []byte
	head = append(head, tagInteger, 1, 1) // v2
	head = append(head, sp.algID...)
	head = append(head, t.Issuer.RawSubject...)
	head = appendTime(head, t.ThisUpdate)
	if !t.NextUpdate.IsZero() {
		head = appendTime(head, t.NextUpdate)
	}
	// Room for: CertificateList, TBSCertList and revokedCertificates
	// headers (tag and ≤ 5 length bytes each) and head.
	reserve := len(head) + 18
	if sizeHint < 16 {
		sizeHint = 16
	}
	buf := make([]byte, reserve, reserve+sizeHint*52+1024)

	var scratch [64]byte
	count := 0
	err = walk(func(serial *big.Int, revokedAt time.Time, reason int) error {
		if serial == nil || serial.Sign() < 0 {
			return fmt.Errorf("%w: negative or nil serial in store", ErrBadSerial)
		}
		n := (serial.BitLen() + 7) / 8
		if n == 0 {
			n = 1
		}
		if n > 20 {
			// RFC 5280 caps serials at 20 octets; the CA issues 17.
			return fmt.Errorf("%w: serial longer than 20 octets", ErrBadSerial)
		}
		mag := serial.FillBytes(scratch[1 : 1+n])
		intLen := n
		if mag[0]&0x80 != 0 {
			scratch[0] = 0
			mag = scratch[:1+n]
			intLen++
		}
		body := 2 + intLen + timeLen(revokedAt)
		withReason := reason != ReasonUnspecified
		if withReason {
			body += 14
		}
		buf = append(buf, tagSequence)
		buf = appendLen(buf, body)
		buf = append(buf, tagInteger, byte(intLen))
		buf = append(buf, mag...)
		buf = appendTime(buf, revokedAt)
		if withReason {
			buf = append(buf, tagSequence, 12, tagSequence, 10, tagOID, 3, 0x55, 0x1d, 0x15,
				tagOctetString, 3, tagEnumerated, 1, byte(reason))
		}
		count++
		return nil
	})
	if err != nil {
		return nil, err
	}
	entriesLen := len(buf) - reserve

	// crlExtensions [0] EXPLICIT.
	var exts []byte
	exts = extension(exts, oidAKI, false, tlv(nil, tagSequence, tlv(nil, 0x80, t.Issuer.SubjectKeyId)))
	exts = extension(exts, oidCRLNumber, false, appendUint(nil, t.Number))
	if t.DeltaBase != 0 {
		exts = extension(exts, oidDeltaCRL, true, appendUint(nil, t.DeltaBase))
	} else if t.FreshestURL != "" {
		gn := tlv(nil, 0x86, []byte(t.FreshestURL))
		dp := tlv(nil, tagSequence, tlv(nil, 0xa0, tlv(nil, 0xa0, gn)))
		exts = extension(exts, oidFreshestCRL, false, tlv(nil, tagSequence, dp))
	}
	buf = tlv(buf, 0xa0, tlv(nil, tagSequence, exts))

	// Fill the headers in backwards in front of the entries.
	pos := reserve
	put := func(p []byte) {
		pos -= len(p)
		copy(buf[pos:], p)
	}
	if count > 0 {
		put(appendLen([]byte{tagSequence}, entriesLen))
	}
	put(head)
	tbsLen := len(buf) - pos
	put(appendLen([]byte{tagSequence}, tbsLen))
	tbs := buf[pos:]

	sig, err := sp.sign(t.Signer, tbs)
	if err != nil {
		return nil, fmt.Errorf("crl: sign CRL %d: %w", t.Number, err)
	}
	outerLen := len(tbs) + len(sp.algID) + 1 + lenSize(len(sig)+1) + len(sig) + 1
	put(appendLen([]byte{tagSequence}, outerLen))
	start := pos
	buf = append(buf, sp.algID...)
	buf = bitString(buf, sig)
	return buf[start:], nil
}
