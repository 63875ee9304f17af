package audit

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// checkpointData is the Data of a checkpoint record. It is covered by the
// record hash, so the key and algorithm a checkpoint claims cannot be swapped.
type checkpointData struct {
	Alg   string `json:"alg"`    // "ecdsa-sha256", "ecdsa-sha384" or "ecdsa-sha512"
	KeyID string `json:"key_id"` // hex SHA-256 of the signer's SubjectPublicKeyInfo
}

const checkpointDomain = "palisade-audit-checkpoint-v1\x00"

// sigAlg picks the digest matching the ECDSA curve strength.
func sigAlg(pub crypto.PublicKey) (crypto.Hash, string, error) {
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return 0, "", fmt.Errorf("checkpoint key is %T, want ECDSA", pub)
	}
	switch k.Curve {
	case elliptic.P256():
		return crypto.SHA256, "ecdsa-sha256", nil
	case elliptic.P384():
		return crypto.SHA384, "ecdsa-sha384", nil
	case elliptic.P521():
		return crypto.SHA512, "ecdsa-sha512", nil
	}
	return 0, "", fmt.Errorf("unsupported ECDSA curve %s", k.Curve.Params().Name)
}

func hashByAlg(alg string) (crypto.Hash, bool) {
	switch alg {
	case "ecdsa-sha256":
		return crypto.SHA256, true
	case "ecdsa-sha384":
		return crypto.SHA384, true
	case "ecdsa-sha512":
		return crypto.SHA512, true
	}
	return 0, false
}

func keyID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// checkpointDigest is what a checkpoint signs: its own seq and hash. The hash
// commits to every earlier record through the chain.
func checkpointDigest(h crypto.Hash, seq uint64, hash string) ([]byte, error) {
	raw, err := hex.DecodeString(hash)
	if err != nil || len(raw) != sha256.Size {
		return nil, errors.New("bad record hash")
	}
	d := h.New()
	d.Write([]byte(checkpointDomain))
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], seq)
	d.Write(n[:])
	d.Write(raw)
	return d.Sum(nil), nil
}

// cpSigner caches what every checkpoint needs from the signer.
type cpSigner struct {
	signer crypto.Signer
	hash   crypto.Hash
	data   json.RawMessage
	keyID  string
	pub    *ecdsa.PublicKey
	cert   []byte
}

func newCPSigner(s crypto.Signer, cert *x509.Certificate) (*cpSigner, error) {
	if s == nil {
		return nil, errors.New("audit: nil checkpoint signer")
	}
	pub := s.Public()
	h, alg, err := sigAlg(pub)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	id, err := keyID(pub)
	if err != nil {
		return nil, fmt.Errorf("audit: checkpoint key: %w", err)
	}
	c := &cpSigner{signer: s, hash: h, keyID: id, pub: pub.(*ecdsa.PublicKey)}
	if cert != nil {
		cid, err := keyID(cert.PublicKey)
		if err != nil || cid != id {
			return nil, errors.New("audit: SignerCert does not certify the checkpoint signer's key")
		}
		c.cert = cert.Raw
	}
	c.data, _ = json.Marshal(checkpointData{Alg: alg, KeyID: id})
	return c, nil
}

func (c *cpSigner) sign(rand io.Reader, seq uint64, hash string) ([]byte, error) {
	dg, err := checkpointDigest(c.hash, seq, hash)
	if err != nil {
		return nil, err
	}
	sig, err := c.signer.Sign(rand, dg, c.hash)
	if err != nil {
		return nil, fmt.Errorf("audit: sign checkpoint %d: %w", seq, err)
	}
	return sig, nil
}

// checkCheckpoint verifies a checkpoint's signature against the trust
// anchors: its key is one of v.keys, or its certificate chains to
// v.opts.Roots. A checkpoint by any other key is an error, also when
// opening a log: a key that cannot be tied to the anchors is how a forger
// without the HSM would re-sign a rewritten chain.
func (v *verifier) checkCheckpoint(w *wire) error {
	if w.Sig == nil {
		return errors.New("checkpoint has no signature")
	}
	var cd checkpointData
	if err := json.Unmarshal(w.Data, &cd); err != nil {
		return fmt.Errorf("checkpoint data: %w", err)
	}
	h, ok := hashByAlg(cd.Alg)
	if !ok {
		return fmt.Errorf("checkpoint algorithm %q not supported", cd.Alg)
	}
	var cert *x509.Certificate
	if w.Cert != nil {
		c, err := v.parseCert(w.Cert)
		if err != nil {
			return fmt.Errorf("checkpoint certificate: %w", err)
		}
		if id, _ := keyID(c.PublicKey); id != cd.KeyID {
			return errors.New("checkpoint certificate is not for the key named in the record")
		}
		cert = c
	}
	pub, ok := v.keys[cd.KeyID]
	switch {
	case ok:
	case cert != nil && v.opts.Roots != nil:
		t, _ := parseTime(w.Time)
		if err := v.chainCert(cert, t); err != nil {
			return fmt.Errorf("checkpoint signed by untrusted key %s: its certificate does not chain to the trusted roots: %w", cd.KeyID, err)
		}
		k, isEC := cert.PublicKey.(*ecdsa.PublicKey)
		if !isEC {
			return fmt.Errorf("checkpoint certificate key is %T, want ECDSA", cert.PublicKey)
		}
		pub = k
	case cert == nil && v.opts.Roots != nil:
		return fmt.Errorf("checkpoint signed by untrusted key %s: no certificate to chain to the trusted roots", cd.KeyID)
	default:
		return fmt.Errorf("checkpoint signed by untrusted key %s", cd.KeyID)
	}
	hh, _, err := sigAlg(pub)
	if err != nil {
		return err
	}
	if hh != h {
		return fmt.Errorf("checkpoint algorithm %s does not match the key", cd.Alg)
	}
	dg, err := checkpointDigest(h, w.Seq, w.Hash)
	if err != nil {
		return err
	}
	if !ecdsa.VerifyASN1(pub, dg, w.Sig) {
		return errors.New("checkpoint signature does not verify: the chain up to here was rewritten, or the signature was forged")
	}
	return nil
}

// certWindow caches a certificate that chained to the roots and the span in
// which its whole chain is valid, so each checkpoint does not rebuild it.
type certWindow struct {
	cert     *x509.Certificate
	from, to time.Time
}

func (v *verifier) parseCert(der []byte) (*x509.Certificate, error) {
	if c, ok := v.certs[string(der)]; ok {
		return c.cert, nil
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	if len(v.certs) < 64 {
		v.certs[string(der)] = &certWindow{cert: c}
	}
	return c, nil
}

func (v *verifier) chainCert(cert *x509.Certificate, at time.Time) error {
	cw := v.certs[string(cert.Raw)]
	if cw != nil && !cw.from.IsZero() && !at.Before(cw.from) && !at.After(cw.to) {
		return nil
	}
	chains, err := cert.Verify(x509.VerifyOptions{Roots: v.opts.Roots, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return err
	}
	if cw != nil {
		cw.from, cw.to = cert.NotBefore, cert.NotAfter
		for _, c := range chains[0] {
			if c.NotBefore.After(cw.from) {
				cw.from = c.NotBefore
			}
			if c.NotAfter.Before(cw.to) {
				cw.to = c.NotAfter
			}
		}
	}
	return nil
}
