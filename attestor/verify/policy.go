package verify

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"regexp"
	"slices"

	"gopkg.in/yaml.v3"
)

// MaxPolicySize caps a PCR policy file.
const MaxPolicySize = 1 << 20

// Policy is the golden PCR policy: for each node class, the accepted SHA-256
// values of each PCR it pins. Version increases with every change so that
// node records can say which policy admitted them.
//
//	version: 3
//	classes:
//	  worker:
//	    pcrs:
//	      0: ["<64 hex>", "<64 hex>"]   # any listed value is accepted
//	      7: ["<64 hex>"]
type Policy struct {
	Version uint64            `yaml:"version"`
	Classes map[string]*Class `yaml:"classes"`
}

// Class pins PCR values for one node class.
type Class struct {
	PCRs map[uint32][]string `yaml:"pcrs"`
}

var classNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidClassName reports whether name may name a node class.
func ValidClassName(name string) bool { return classNameRE.MatchString(name) }

// ParsePolicy strictly decodes and validates a policy file: exactly one
// YAML document, no unknown keys.
func ParsePolicy(raw []byte) (*Policy, error) {
	if len(raw) > MaxPolicySize {
		return nil, fmt.Errorf("%w: %d bytes (max %d)", ErrTooLarge, len(raw), MaxPolicySize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	var p Policy
	if err := dec.Decode(&p); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: empty file", ErrPolicy)
		}
		return nil, fmt.Errorf("%w: %w", ErrPolicy, err)
	}
	// A second document would otherwise be ignored, whatever it says; an
	// empty one (a trailing "---") says nothing.
	if !onlyEmptyDocuments(dec) {
		return nil, fmt.Errorf("%w: more than one YAML document", ErrPolicy)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Validate checks versions, class names, PCR indices and digest encodings.
func (p *Policy) Validate() error {
	if p.Version == 0 {
		return fmt.Errorf("%w: version must be at least 1", ErrPolicy)
	}
	if len(p.Classes) == 0 {
		return fmt.Errorf("%w: no classes", ErrPolicy)
	}
	for name, c := range p.Classes {
		if !ValidClassName(name) {
			return fmt.Errorf("%w: invalid class name %q", ErrPolicy, name)
		}
		if c == nil || len(c.PCRs) == 0 {
			return fmt.Errorf("%w: class %q pins no PCRs", ErrPolicy, name)
		}
		for i, vals := range c.PCRs {
			if i > MaxPCR {
				return fmt.Errorf("%w: class %q: PCR %d out of range", ErrPolicy, name, i)
			}
			if len(vals) == 0 {
				return fmt.Errorf("%w: class %q: PCR %d has no accepted value", ErrPolicy, name, i)
			}
			for _, v := range vals {
				b, err := hex.DecodeString(v)
				if err != nil || len(b) != sha256.Size {
					return fmt.Errorf("%w: class %q: PCR %d: %q is not a hex SHA-256 digest", ErrPolicy, name, i, v)
				}
			}
		}
	}
	return nil
}

// Selection returns the sorted PCR indices the class pins.
func (p *Policy) Selection(class string) ([]uint32, error) {
	c, ok := p.Classes[class]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownClass, class)
	}
	return slices.Sorted(maps.Keys(c.PCRs)), nil
}

// Check compares quoted PCR values against the class's golden values and
// names the first PCR (lowest index) that differs.
func (p *Policy) Check(class string, values map[uint32][]byte) error {
	sel, err := p.Selection(class)
	if err != nil {
		return err
	}
	for _, i := range sel {
		got, ok := values[i]
		if !ok {
			return fmt.Errorf("%w: PCR %d not quoted", ErrPCRMismatch, i)
		}
		matched := false
		for _, want := range p.Classes[class].PCRs[i] {
			w, _ := hex.DecodeString(want) // validated
			if subtle.ConstantTimeCompare(w, got) == 1 {
				matched = true
			}
		}
		if !matched {
			return fmt.Errorf("%w: PCR %d is %x", ErrPCRMismatch, i, got)
		}
	}
	return nil
}

// onlyEmptyDocuments reports whether what dec has left is empty documents
// (a trailing "---" that YAML writers add), which carry nothing.
func onlyEmptyDocuments(dec *yaml.Decoder) bool {
	for {
		var extra any
		err := dec.Decode(&extra)
		if errors.Is(err, io.EOF) {
			return true
		}
		if err != nil || extra != nil {
			return false
		}
	}
}
