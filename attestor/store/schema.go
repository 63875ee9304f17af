package store

// Bucket schema (schema version 1). Every value is written in one bbolt
// transaction per Store call, so a kill -9 leaves either the old or the new
// state.
//
//	meta      "schema" -> "1"
//	manifest  entry ID ("ek:<hex sha256 of EK PKIX>" | "ca:<hex sha256 of CA DER>")
//	          -> JSON attestor.ManifestEntry
//	policy    8-byte big-endian version -> PCR policy YAML as the operator
//	          supplied it; the highest key is the current policy, older
//	          versions are kept as history
//	nodes     node SPIFFE ID -> JSON attestor.NodeRecord
var (
	bucketMeta     = []byte("meta")
	bucketManifest = []byte("manifest")
	bucketPolicy   = []byte("policy")
	bucketNodes    = []byte("nodes")

	keySchema = []byte("schema")
)

// SchemaVersion is the layout this package reads and writes.
const SchemaVersion = "1"
