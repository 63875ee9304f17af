package crl

import (
	"bytes"
	"crypto"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/asn1"
	"fmt"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// OCSP wire format, both directions, hand-rolled: x/crypto/ocsp's
// ParseRequest drops the nonce and its CreateResponse puts extra
// extensions in singleExtensions, where RFC 6960 §4.4.1 clients (openssl)
// do not look for the nonce.

// Request is one parsed OCSP request (RFC 6960 §4.1.1). Palisade answers a
// single certificate per request, as RFC 5019 clients send.
type Request struct {
	HashAlg        crypto.Hash
	IssuerNameHash []byte
	IssuerKeyHash  []byte
	// Serial is the DER content octets of the serial INTEGER (canonical).
	Serial []byte
	// CertID is the request's CertID DER, echoed in answers signed on demand.
	CertID []byte
	// Nonce is the nonce extension's extnValue, echoed verbatim; nil when
	// absent.
	Nonce []byte
}

var hashOIDs = []struct {
	oid  asn1.ObjectIdentifier
	hash crypto.Hash
}{
	{asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}, crypto.SHA1},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}, crypto.SHA256},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}, crypto.SHA384},
	{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}, crypto.SHA512},
}

const maxNonceValue = 34 // RFC 8954: nonce of 1..32 octets, inside an OCTET STRING

// ParseRequest parses a DER OCSPRequest strictly. Errors wrap
// ErrMalformedRequest.
func ParseRequest(der []byte) (*Request, error) {
	bad := func(what string) (*Request, error) {
		return nil, fmt.Errorf("%w: %s", ErrMalformedRequest, what)
	}
	in := cryptobyte.String(der)
	var req, tbs cryptobyte.String
	if !in.ReadASN1(&req, cbasn1.SEQUENCE) || !in.Empty() {
		return bad("not a DER SEQUENCE")
	}
	if !req.ReadASN1(&tbs, cbasn1.SEQUENCE) {
		return bad("no tbsRequest")
	}
	// optionalSignature [0] is accepted and ignored: requests need no
	// signature here (RFC 6960 §4.1.2 leaves it to the responder).
	if !req.SkipOptionalASN1(cbasn1.Tag(0).Constructed().ContextSpecific()) || !req.Empty() {
		return bad("trailing data after tbsRequest")
	}
	var version cryptobyte.String
	var hasVersion bool
	if !tbs.ReadOptionalASN1(&version, &hasVersion, cbasn1.Tag(0).Constructed().ContextSpecific()) {
		return bad("version")
	}
	if hasVersion {
		var v int64
		if !version.ReadASN1Integer(&v) || v != 0 || !version.Empty() {
			return bad("unsupported version")
		}
	}
	if !tbs.SkipOptionalASN1(cbasn1.Tag(1).Constructed().ContextSpecific()) {
		return bad("requestorName")
	}
	var list cryptobyte.String
	if !tbs.ReadASN1(&list, cbasn1.SEQUENCE) {
		return bad("requestList")
	}
	var exts cryptobyte.String
	var hasExts bool
	if !tbs.ReadOptionalASN1(&exts, &hasExts, cbasn1.Tag(2).Constructed().ContextSpecific()) || !tbs.Empty() {
		return bad("requestExtensions")
	}
	var one cryptobyte.String
	if !list.ReadASN1(&one, cbasn1.SEQUENCE) {
		return bad("empty requestList")
	}
	if !list.Empty() {
		return bad("more than one certificate per request")
	}
	r := &Request{}
	var certID cryptobyte.String
	if !one.ReadASN1Element(&certID, cbasn1.SEQUENCE) {
		return bad("CertID")
	}
	r.CertID = bytes.Clone(certID)
	if !one.SkipOptionalASN1(cbasn1.Tag(0).Constructed().ContextSpecific()) || !one.Empty() {
		return bad("singleRequestExtensions")
	}
	var cid, alg cryptobyte.String
	var oid asn1.ObjectIdentifier
	certID.ReadASN1(&cid, cbasn1.SEQUENCE)
	if !cid.ReadASN1(&alg, cbasn1.SEQUENCE) || !alg.ReadASN1ObjectIdentifier(&oid) {
		return bad("hashAlgorithm")
	}
	if !alg.Empty() {
		var null cryptobyte.String
		if !alg.ReadASN1(&null, cbasn1.NULL) || !null.Empty() || !alg.Empty() {
			return bad("hashAlgorithm parameters")
		}
	}
	for _, h := range hashOIDs {
		if h.oid.Equal(oid) {
			r.HashAlg = h.hash
		}
	}
	if r.HashAlg == 0 {
		return bad("unsupported hash algorithm " + oid.String())
	}
	var nameHash, keyHash, serial cryptobyte.String
	if !cid.ReadASN1(&nameHash, cbasn1.OCTET_STRING) || !cid.ReadASN1(&keyHash, cbasn1.OCTET_STRING) ||
		!cid.ReadASN1(&serial, cbasn1.INTEGER) || !cid.Empty() {
		return bad("CertID fields")
	}
	if len(nameHash) != r.HashAlg.Size() || len(keyHash) != r.HashAlg.Size() {
		return bad("issuer hash length does not match its algorithm")
	}
	if !canonicalInt(serial) || len(serial) > 21 {
		return bad("serialNumber")
	}
	r.IssuerNameHash, r.IssuerKeyHash, r.Serial = bytes.Clone(nameHash), bytes.Clone(keyHash), bytes.Clone(serial)
	if hasExts {
		var seq cryptobyte.String
		if !exts.ReadASN1(&seq, cbasn1.SEQUENCE) || !exts.Empty() {
			return bad("requestExtensions")
		}
		for !seq.Empty() {
			var ext, val cryptobyte.String
			var id asn1.ObjectIdentifier
			var critical bool
			if !seq.ReadASN1(&ext, cbasn1.SEQUENCE) || !ext.ReadASN1ObjectIdentifier(&id) ||
				!ext.ReadOptionalASN1Boolean(&critical, cbasn1.BOOLEAN, false) ||
				!ext.ReadASN1(&val, cbasn1.OCTET_STRING) || !ext.Empty() {
				return bad("extension")
			}
			switch {
			case id.Equal(asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1, 2}):
				if r.Nonce != nil {
					return bad("duplicate nonce")
				}
				if len(val) == 0 || len(val) > maxNonceValue {
					return bad("nonce length outside 1..32 octets")
				}
				r.Nonce = bytes.Clone(val)
			case critical:
				return bad("unsupported critical extension " + id.String())
			}
		}
	}
	return r, nil
}

// canonicalInt reports whether b is a minimal DER INTEGER encoding.
func canonicalInt(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	if len(b) > 1 && (b[0] == 0 && b[1]&0x80 == 0 || b[0] == 0xff && b[1]&0x80 != 0) {
		return false
	}
	return true
}

// issuerHashes are an issuer's CertID hashes for one algorithm.
type issuerHashes struct {
	name, key []byte
}

func hashesFor(cert *x509.Certificate, h crypto.Hash) (issuerHashes, error) {
	var spki struct {
		Algorithm asn1.RawValue
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(cert.RawSubjectPublicKeyInfo, &spki); err != nil {
		return issuerHashes{}, fmt.Errorf("crl: issuer public key: %w", err)
	}
	sum := func(b []byte) []byte {
		switch h {
		case crypto.SHA1:
			s := sha1.Sum(b)
			return s[:]
		case crypto.SHA256:
			s := sha256.Sum256(b)
			return s[:]
		case crypto.SHA384:
			s := sha512.Sum384(b)
			return s[:]
		default:
			s := sha512.Sum512(b)
			return s[:]
		}
	}
	return issuerHashes{name: sum(cert.RawSubject), key: sum(spki.PublicKey.RightAlign())}, nil
}

// certIDFor encodes a CertID for serial (DER INTEGER content octets).
func certIDFor(h crypto.Hash, ih issuerHashes, serial []byte) []byte {
	var oid asn1.ObjectIdentifier
	for _, x := range hashOIDs {
		if x.hash == h {
			oid = x.oid
		}
	}
	oidDER, _ := asn1.Marshal(oid)
	alg := tlv(nil, tagSequence, oidDER, []byte{tagNull, 0})
	return tlv(nil, tagSequence, alg, tlv(nil, tagOctetString, ih.name), tlv(nil, tagOctetString, ih.key), tlv(nil, tagInteger, serial))
}

// OCSP certificate status values (RFC 6960; same numbers as x/crypto/ocsp).
const (
	StatusGood    = 0
	StatusRevoked = 1
	StatusUnknown = 2
)

// singleAnswer is the content of one SingleResponse.
type singleAnswer struct {
	certID     []byte
	status     int
	revokedAt  time.Time
	reason     int
	thisUpdate time.Time
	nextUpdate time.Time
}

// responseSigner is what signs a BasicOCSPResponse: the delegated
// responder key and its certificate.
type responseSigner struct {
	signer      interface{ Sign([]byte) ([]byte, error) }
	algID       []byte
	responderID []byte // [2] byKey
	certs       []byte // [0] EXPLICIT SEQUENCE OF Certificate
}

// encodeResponse builds a successful OCSPResponse.
func encodeResponse(rs *responseSigner, a singleAnswer, nonce []byte, producedAt time.Time) ([]byte, error) {
	var status []byte
	switch a.status {
	case StatusGood:
		status = []byte{0x80, 0}
	case StatusRevoked:
		inner := appendGenTime(nil, a.revokedAt)
		if a.reason != ReasonUnspecified {
			inner = tlv(inner, 0xa0, []byte{tagEnumerated, 1, byte(a.reason)})
		}
		status = tlv(nil, 0xa1, inner)
	default:
		status = []byte{0x82, 0}
	}
	single := tlv(nil, tagSequence, a.certID, status, appendGenTime(nil, a.thisUpdate),
		tlv(nil, 0xa0, appendGenTime(nil, a.nextUpdate)))
	var rdata [][]byte
	rdata = append(rdata, rs.responderID, appendGenTime(nil, producedAt), tlv(nil, tagSequence, single))
	if nonce != nil {
		ext := extension(nil, oidOCSPNonce, false, nonce)
		rdata = append(rdata, tlv(nil, 0xa1, tlv(nil, tagSequence, ext)))
	}
	tbs := tlv(nil, tagSequence, rdata...)
	sig, err := rs.signer.Sign(tbs)
	if err != nil {
		return nil, err
	}
	basic := tlv(nil, tagSequence, tbs, rs.algID, bitString(nil, sig), rs.certs)
	rb := tlv(nil, tagSequence, tlv(nil, tagOID, oidOCSPBasic), tlv(nil, tagOctetString, basic))
	return tlv(nil, tagSequence, []byte{tagEnumerated, 1, 0}, tlv(nil, 0xa0, rb)), nil
}
