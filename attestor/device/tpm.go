package device

import (
	"bytes"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"

	"github.com/google/go-tpm/tpm2"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/palisade-id/palisade/attestor/verify"
)

// TCG provisioning defaults for the RSA-2048 EK.
const (
	DefaultEKHandle    = tpm2.TPMHandle(0x81010001)
	DefaultEKCertIndex = tpm2.TPMHandle(0x01c00002)
)

// nvChunk stays under every TPM's TPM_PT_NV_BUFFER_MAX.
const nvChunk = 512

// Options select the EK.
type Options struct {
	// EKHandle is the persistent EK (default 0x81010001). If no object is
	// there, the EK is created from the TCG RSA-2048 template.
	EKHandle tpm2.TPMHandle
	// EKCertIndex is the NV index of the EK certificate (default
	// 0x01c00002); a missing index means no certificate.
	EKCertIndex tpm2.TPMHandle
	// EventLog is the firmware event log file sent with quotes, e.g.
	// DefaultEventLog for a hardware TPM; empty sends none.
	EventLog string
}

// DefaultEventLog is where Linux exposes the firmware event log.
const DefaultEventLog = "/sys/kernel/security/tpm0/binary_bios_measurements"

// TPM is an open TPM with a loaded EK and AK.
type TPM struct {
	mu      sync.Mutex
	t       transport.TPMCloser
	ek, ak  tpm2.NamedHandle
	ekPub   []byte
	akPub   []byte
	ekCert  []byte
	logPath string
	// ekNameAlg is the hash of the EK's policy session (its nameAlg);
	// ekUserAuth means the EK takes its (empty) password, as the TCG
	// high-range templates allow.
	ekNameAlg  tpm2.TPMIAlgHash
	ekUserAuth bool
	// transient handles to flush on Close
	flush []tpm2.TPMHandle
}

// Open loads the EK (persistent, or created from the TCG template), reads
// its certificate if present, and creates the AK: an ECC P-256 restricted
// signing primary key in the owner hierarchy (the same key every time,
// since primaries derive from the hierarchy seed). Open takes ownership of
// t and closes it on error.
func Open(t transport.TPMCloser, o Options) (_ *TPM, err error) {
	if o.EKHandle == 0 {
		o.EKHandle = DefaultEKHandle
	}
	if o.EKCertIndex == 0 {
		o.EKCertIndex = DefaultEKCertIndex
	}
	t = retrying{t}
	d := &TPM{t: t, logPath: o.EventLog}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if rp, err := (tpm2.ReadPublic{ObjectHandle: o.EKHandle}).Execute(t); err == nil {
		d.ek = tpm2.NamedHandle{Handle: o.EKHandle, Name: rp.Name}
		d.ekPub = rp.OutPublic.Bytes()
	} else {
		cp, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tpm2.RSAEKTemplate)}).Execute(t)
		if err != nil {
			return nil, fmt.Errorf("device: create EK: %w", err)
		}
		d.flush = append(d.flush, cp.ObjectHandle)
		d.ek = tpm2.NamedHandle{Handle: cp.ObjectHandle, Name: cp.Name}
		d.ekPub = cp.OutPublic.Bytes()
	}
	ekPub, err := tpm2.Unmarshal[tpm2.TPMTPublic](d.ekPub)
	if err != nil {
		return nil, fmt.Errorf("device: EK public: %w", err)
	}
	d.ekNameAlg, d.ekUserAuth = ekPub.NameAlg, ekPub.ObjectAttributes.UserWithAuth
	if d.ekCert, err = readNV(t, o.EKCertIndex); err != nil {
		return nil, err
	}
	cp, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(verify.AKTemplate())}).Execute(t)
	if err != nil {
		return nil, fmt.Errorf("device: create AK: %w", err)
	}
	d.flush = append(d.flush, cp.ObjectHandle)
	d.ak = tpm2.NamedHandle{Handle: cp.ObjectHandle, Name: cp.Name}
	d.akPub = cp.OutPublic.Bytes()
	return d, nil
}

// readNV reads a whole NV index, or returns nil if it is not defined.
func readNV(t transport.TPM, index tpm2.TPMHandle) ([]byte, error) {
	rp, err := (tpm2.NVReadPublic{NVIndex: index}).Execute(t)
	if err != nil {
		var rc tpm2.TPMRC
		if errors.As(err, &rc) || isHandleErr(err) {
			return nil, nil // no certificate provisioned
		}
		return nil, fmt.Errorf("device: NV %#x: %w", uint32(index), err)
	}
	pub, err := rp.NVPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("device: NV %#x public: %w", uint32(index), err)
	}
	var out []byte
	for off := 0; off < int(pub.DataSize); off += nvChunk {
		n := min(nvChunk, int(pub.DataSize)-off)
		r, err := (tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: index, Name: rp.NVName, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: index, Name: rp.NVName},
			Size:       uint16(n), Offset: uint16(off),
		}).Execute(t)
		if err != nil {
			// Some TPMs only allow owner reads of the EK certificate.
			r, err = (tpm2.NVRead{
				AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
				NVIndex:    tpm2.NamedHandle{Handle: index, Name: rp.NVName},
				Size:       uint16(n), Offset: uint16(off),
			}).Execute(t)
			if err != nil {
				return nil, fmt.Errorf("device: read NV %#x: %w", uint32(index), err)
			}
		}
		out = append(out, r.Data.Buffer...)
	}
	return trimDER(out), nil
}

func isHandleErr(err error) bool {
	var he tpm2.TPMFmt1Error
	return errors.As(err, &he)
}

// trimDER drops the padding some TPMs leave after the certificate.
func trimDER(b []byte) []byte {
	var raw asn1.RawValue
	if rest, err := asn1.Unmarshal(b, &raw); err == nil {
		return b[:len(b)-len(rest)]
	}
	return b
}

// EKPublic returns the EK's TPMT_PUBLIC.
func (d *TPM) EKPublic() []byte { return bytes.Clone(d.ekPub) }

// EKCert returns the DER EK certificate, or nil.
func (d *TPM) EKCert() []byte { return bytes.Clone(d.ekCert) }

// AKPublic returns the AK's TPMT_PUBLIC.
func (d *TPM) AKPublic() []byte { return bytes.Clone(d.akPub) }

// ekAuth authorises EK use: the empty password if the EK allows it, else
// the TCG default policy PolicySecret(TPM_RH_ENDORSEMENT).
func (d *TPM) ekAuth() tpm2.Session {
	if d.ekUserAuth {
		return tpm2.PasswordAuth(nil)
	}
	return tpm2.Policy(d.ekNameAlg, 16, ekPolicy)
}

func ekPolicy(t transport.TPM, handle tpm2.TPMISHPolicy, nonceTPM tpm2.TPM2BNonce) error {
	_, err := (tpm2.PolicySecret{AuthHandle: tpm2.TPMRHEndorsement, PolicySession: handle, NonceTPM: nonceTPM}).Execute(t)
	return err
}

// ActivateCredential recovers a secret the server wrapped to the EK for the
// AK's name. The TPM refuses if the credential names another object.
func (d *TPM) ActivateCredential(idObject, encryptedSecret []byte) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, err := (tpm2.ActivateCredential{
		ActivateHandle: tpm2.AuthHandle{Handle: d.ak.Handle, Name: d.ak.Name, Auth: tpm2.PasswordAuth(nil)},
		KeyHandle:      tpm2.AuthHandle{Handle: d.ek.Handle, Name: d.ek.Name, Auth: d.ekAuth()},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: idObject},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: encryptedSecret},
	}).Execute(d.t)
	if err != nil {
		return nil, fmt.Errorf("device: activate credential: %w", err)
	}
	return r.CertInfo.Buffer, nil
}

// ReadPCRs returns the SHA-256 bank values of pcrs.
func (d *TPM) ReadPCRs(pcrs []uint32) (map[uint32][]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.readPCRs(pcrs)
}

func (d *TPM) readPCRs(pcrs []uint32) (map[uint32][]byte, error) {
	out := map[uint32][]byte{}
	remaining := slices.Clone(pcrs)
	// A TPM returns at most 8 digests per PCR_Read.
	for len(remaining) > 0 {
		sel, err := verify.PCRSelection(remaining)
		if err != nil {
			return nil, fmt.Errorf("device: %w", err)
		}
		r, err := (tpm2.PCRRead{PCRSelectionIn: sel}).Execute(d.t)
		if err != nil {
			return nil, fmt.Errorf("device: PCR read: %w", err)
		}
		var got []uint32
		for _, s := range r.PCRSelectionOut.PCRSelections {
			if s.Hash != tpm2.TPMAlgSHA256 {
				continue
			}
			for i := range uint32(len(s.PCRSelect) * 8) {
				if s.PCRSelect[i/8]&(1<<(i%8)) != 0 {
					got = append(got, i)
				}
			}
		}
		if len(got) == 0 || len(got) != len(r.PCRValues.Digests) {
			return nil, errors.New("device: PCR read returned no SHA-256 values (bank not active?)")
		}
		for k, i := range got {
			out[i] = r.PCRValues.Digests[k].Buffer
		}
		remaining = slices.DeleteFunc(remaining, func(i uint32) bool { _, ok := out[i]; return ok })
	}
	return out, nil
}

// Quote has the AK sign the SHA-256 bank values of pcrs with nonce as
// qualifying data, and reads the values for the server's diagnostics.
func (d *TPM) Quote(nonce []byte, pcrs []uint32) (quoted, sig []byte, values map[uint32][]byte, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	sel, err := verify.PCRSelection(pcrs)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("device: %w", err)
	}
	r, err := (tpm2.Quote{
		SignHandle:     tpm2.AuthHandle{Handle: d.ak.Handle, Name: d.ak.Name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: nonce},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		PCRSelect:      sel,
	}).Execute(d.t)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("device: quote: %w", err)
	}
	values, err = d.readPCRs(pcrs)
	if err != nil {
		return nil, nil, nil, err
	}
	return r.Quoted.Bytes(), tpm2.Marshal(r.Signature), values, nil
}

// ExtendPCR measures data into PCR i (SHA-256 of data, as TPM2_PCR_Event
// does for every active bank).
func (d *TPM) ExtendPCR(i uint32, data []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	h := sha256.Sum256(data)
	_, err := (tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(i), Auth: tpm2.PasswordAuth(nil)},
		Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{
			HashAlg: tpm2.TPMAlgSHA256, Digest: h[:],
		}}},
	}).Execute(d.t)
	if err != nil {
		return fmt.Errorf("device: extend PCR %d: %w", i, err)
	}
	return nil
}

// EventLog returns the firmware event log, or nil if none is configured
// or the file does not exist.
func (d *TPM) EventLog() ([]byte, error) {
	if d.logPath == "" {
		return nil, nil
	}
	b, err := os.ReadFile(d.logPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // firmware without a log
	}
	if err != nil {
		return nil, fmt.Errorf("device: event log: %w", err)
	}
	return b, nil
}

// Close flushes transient objects and closes the transport.
func (d *TPM) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, h := range d.flush {
		_, _ = (tpm2.FlushContext{FlushHandle: h}).Execute(d.t)
	}
	d.flush = nil
	return d.t.Close()
}
