// Package device is the node side of TPM 2.0 attestation: transports to a
// TPM character device (/dev/tpmrm0) or to swtpm's raw command socket, and
// the TPM operations the protocol needs (EK and its certificate, an ECC
// P-256 restricted signing AK, ActivateCredential, PCR reads, Quote).
// A *TPM satisfies attestor/agent.TPM.
package device
