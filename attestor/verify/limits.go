package verify

// Size caps for untrusted inputs. TPM structures are small; anything larger
// is refused before parsing.
const (
	MaxPublicSize    = 1024    // TPMT_PUBLIC (RSA-4096 fits)
	MaxCertSize      = 8 << 10 // one DER certificate
	MaxIntermediates = 4       // EK chain intermediates
	MaxAttestSize    = 1024    // TPMS_ATTEST of a quote
	MaxSignatureSize = 1024    // TPMT_SIGNATURE
	MaxPCR           = 23      // highest PCR index of a PC client TPM
	NonceSize        = 32      // server nonce length
)
