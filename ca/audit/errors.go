package audit

import "errors"

var (
	// ErrTampered means the log's hash chain or checkpoint signatures do not
	// verify; the wrapping error or Report says which record.
	ErrTampered = errors.New("audit: log tampered")
	// ErrClosed is returned by operations on a closed or failed Log.
	ErrClosed = errors.New("audit: log closed")
	// ErrCorrupt means Open found damage it must not repair on its own: an
	// unterminated tail too long to be a torn write.
	ErrCorrupt = errors.New("audit: corrupt")
	// ErrAnchor means the anchor (see Anchor) could not be read, parsed or
	// written. A checkpoint whose anchor update failed is durable in the
	// log; the anchor still names an earlier one.
	ErrAnchor = errors.New("audit: anchor")
	// ErrNothingToReanchor is Reanchor's refusal of a log that reaches its
	// anchor (or has none stored): Open takes it as it is.
	ErrNothingToReanchor = errors.New("audit: nothing to reanchor")
	// ErrInvalid rejects an Append argument (reserved or oversized kind,
	// invalid UTF-8, data that is not JSON or exceeds MaxDataBytes).
	ErrInvalid = errors.New("audit: invalid record")
)
