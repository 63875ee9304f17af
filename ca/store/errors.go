package store

import "errors"

// Sentinel errors. Callers test them with errors.Is; the returned errors wrap
// them with the detail (path, key, serial) that failed.
var (
	// ErrLocked: another process holds the database file lock (Options.Timeout elapsed).
	ErrLocked = errors.New("store: database is locked by another process")
	// ErrCorrupt: the file is not a readable database (bad meta page, truncated, damaged pages or records).
	ErrCorrupt = errors.New("store: database is corrupt")
	// ErrSchemaTooNew: the file was written by a newer release; it is never modified.
	ErrSchemaTooNew = errors.New("store: database schema is newer than this release")
	// ErrClosed: the Store was closed.
	ErrClosed = errors.New("store: closed")
	// ErrInvalid: bad input; nothing was written.
	ErrInvalid = errors.New("store: invalid argument")

	// ErrNotInitialized: no CA metadata yet (the ceremony has not run).
	ErrNotInitialized = errors.New("store: CA not initialized")
	// ErrAlreadyInitialized: CA metadata already present.
	ErrAlreadyInitialized = errors.New("store: CA already initialized")

	// ErrIntermediateNotFound: no intermediate with that key ID.
	ErrIntermediateNotFound = errors.New("store: intermediate not found")
	// ErrSlotOccupied: another intermediate already holds the active or next slot.
	ErrSlotOccupied = errors.New("store: intermediate slot occupied")
	// ErrIntermediateRetired: a retired intermediate cannot be activated again.
	ErrIntermediateRetired = errors.New("store: intermediate is retired")

	// ErrEntryExists: an entry with the same SPIFFE ID, parent ID and selectors (or the same ID) exists.
	ErrEntryExists = errors.New("store: registration entry already exists")
	// ErrEntryNotFound: no entry with that ID.
	ErrEntryNotFound = errors.New("store: registration entry not found")

	// ErrSerialExists: the serial was recorded before; the CA must pick a new one.
	ErrSerialExists = errors.New("store: certificate serial already recorded")
	// ErrCertNotFound: the serial was never recorded.
	ErrCertNotFound = errors.New("store: certificate not found")
	// ErrAlreadyRevoked: the certificate is already revoked.
	ErrAlreadyRevoked = errors.New("store: certificate already revoked")

	// ErrMetaNotFound: no value stored under that GetMeta key.
	ErrMetaNotFound = errors.New("store: meta key not found")
)
