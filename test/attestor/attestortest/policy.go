package attestortest

import (
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// PCRPolicy is a golden PCR policy file of the given version with one class,
// "worker", pinning the PCRs in pcrs (one map per node, as read from its TPM)
// to the values given for them.
func PCRPolicy(version int, pcrs ...map[uint32][]byte) []byte {
	allowed := map[uint32][]string{}
	for _, m := range pcrs {
		for i, v := range m {
			if h := hex.EncodeToString(v); !slices.Contains(allowed[i], h) {
				allowed[i] = append(allowed[i], h)
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "version: %d\nclasses:\n  worker:\n    pcrs:\n", version)
	for _, i := range slices.Sorted(maps.Keys(allowed)) {
		quoted := make([]string, len(allowed[i]))
		for j, h := range allowed[i] {
			quoted[j] = fmt.Sprintf("%q", h)
		}
		fmt.Fprintf(&b, "      %d: [%s]\n", i, strings.Join(quoted, ", "))
	}
	return []byte(b.String())
}
