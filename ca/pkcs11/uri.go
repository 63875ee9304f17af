package pkcs11

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"
)

// URI is a parsed RFC 7512 pkcs11: URI. Empty string fields (nil ID, nil
// Slot) are absent attributes. The path attributes select a token and an
// object; the query attributes say how to reach it.
//
// Supported path attributes: token, manufacturer, serial, model,
// library-manufacturer, library-description, library-version,
// slot-description, slot-manufacturer, slot-id, object, id, type.
// Supported query attributes: module-path, module-name, pin-source,
// pin-value. pin-source is a file: URI (or an absolute path) whose first
// line is the PIN, or, as a Palisade extension, env:NAME. pin-value is
// accepted but discouraged: it is never printed (String omits it).
type URI struct {
	Token               string
	Manufacturer        string
	Serial              string
	Model               string
	LibraryManufacturer string
	LibraryDescription  string
	LibraryVersion      string
	SlotDescription     string
	SlotManufacturer    string
	Slot                *int // slot-id

	Object string // CKA_LABEL
	ID     []byte // CKA_ID
	Type   string // private, public, cert, secret-key, data

	ModulePath string
	ModuleName string
	PinSource  string
	PinValue   string
}

const scheme = "pkcs11:"

// Object types allowed in the type attribute.
var objectTypes = map[string]bool{"private": true, "public": true, "cert": true, "secret-key": true, "data": true}

var (
	pathAttrs = map[string]bool{"token": true, "manufacturer": true, "serial": true, "model": true,
		"library-manufacturer": true, "library-description": true, "library-version": true,
		"slot-description": true, "slot-manufacturer": true, "slot-id": true,
		"object": true, "id": true, "type": true}
	queryAttrs = map[string]bool{"module-path": true, "module-name": true, "pin-source": true, "pin-value": true}
)

// maxURILen bounds the input: URIs come from configuration files and
// operators, and a real one is a few hundred bytes.
const maxURILen = 8 << 10

// ParseURI parses a pkcs11: URI strictly: unknown or repeated attributes,
// characters that must be percent-encoded, bad percent-encoding, empty
// values and malformed slot-id, library-version or type are errors that
// name the attribute. The error never contains the pin-value.
func ParseURI(s string) (*URI, error) {
	if len(s) > maxURILen {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrInvalidURI, maxURILen)
	}
	if len(s) < len(scheme) || !strings.EqualFold(s[:len(scheme)], scheme) {
		return nil, fmt.Errorf("%w: must start with %q", ErrInvalidURI, scheme)
	}
	path, query, hasQuery := strings.Cut(s[len(scheme):], "?")
	u := &URI{}
	seen := map[string]bool{}
	if path != "" {
		if err := eachAttr(path, ";", "path", pathAttrs, seen, u.setPath); err != nil {
			return nil, err
		}
	}
	if hasQuery {
		if query == "" {
			return nil, fmt.Errorf("%w: empty query after '?'", ErrInvalidURI)
		}
		if err := eachAttr(query, "&", "query", queryAttrs, seen, u.setQuery); err != nil {
			return nil, err
		}
	}
	if u.PinSource != "" && u.PinValue != "" {
		return nil, fmt.Errorf("%w: both pin-source and pin-value given", ErrInvalidURI)
	}
	return u, nil
}

// eachAttr splits one URI component (path or query) into attributes,
// checks each name against known and decodes its value into set.
func eachAttr(list, sep, component string, known map[string]bool, seen map[string]bool, set func(name, val string) error) error {
	for _, attr := range strings.Split(list, sep) {
		name, raw, err := splitAttr(attr, component, seen)
		if err != nil {
			return err
		}
		if !known[name] {
			return fmt.Errorf("%w: unknown %s attribute %q", ErrInvalidURI, component, truncate(name))
		}
		val, err := decode(name, raw, component == "query")
		if err != nil {
			return err
		}
		if err := set(name, val); err != nil {
			return err
		}
	}
	return nil
}

func (u *URI) setQuery(name, val string) error {
	switch name {
	case "module-path":
		u.ModulePath = val
	case "module-name":
		u.ModuleName = val
	case "pin-source":
		u.PinSource = val
	case "pin-value":
		u.PinValue = val
	default:
		return fmt.Errorf("%w: unknown query attribute %q", ErrInvalidURI, name)
	}
	return nil
}

func splitAttr(attr, where string, seen map[string]bool) (name, raw string, err error) {
	name, raw, ok := strings.Cut(attr, "=")
	if !ok {
		if attr == "" {
			return "", "", fmt.Errorf("%w: empty %s attribute (stray separator)", ErrInvalidURI, where)
		}
		return "", "", fmt.Errorf("%w: %s attribute %q has no '='", ErrInvalidURI, where, truncate(attr))
	}
	if seen[name] {
		return "", "", fmt.Errorf("%w: attribute %q given more than once", ErrInvalidURI, truncate(name))
	}
	seen[name] = true
	if raw == "" {
		return "", "", fmt.Errorf("%w: attribute %q has an empty value", ErrInvalidURI, truncate(name))
	}
	return name, raw, nil
}

func (u *URI) setPath(name, val string) error {
	switch name {
	case "token":
		u.Token = val
	case "manufacturer":
		u.Manufacturer = val
	case "serial":
		u.Serial = val
	case "model":
		u.Model = val
	case "library-manufacturer":
		u.LibraryManufacturer = val
	case "library-description":
		u.LibraryDescription = val
	case "library-version":
		if !validVersion(val) {
			return fmt.Errorf("%w: library-version %q is not DIGITS[.DIGITS]", ErrInvalidURI, truncate(val))
		}
		u.LibraryVersion = val
	case "slot-description":
		u.SlotDescription = val
	case "slot-manufacturer":
		u.SlotManufacturer = val
	case "slot-id":
		if strings.TrimLeft(val, "0123456789") != "" {
			return fmt.Errorf("%w: slot-id %q is not a decimal number", ErrInvalidURI, truncate(val))
		}
		n, err := strconv.ParseUint(val, 10, 31)
		if err != nil {
			return fmt.Errorf("%w: slot-id %q out of range", ErrInvalidURI, truncate(val))
		}
		slot := int(n)
		u.Slot = &slot
	case "object":
		u.Object = val
	case "id":
		u.ID = []byte(val)
	case "type":
		if !objectTypes[val] {
			return fmt.Errorf("%w: type %q is not one of private, public, cert, secret-key, data", ErrInvalidURI, truncate(val))
		}
		u.Type = val
	default:
		return fmt.Errorf("%w: unknown path attribute %q", ErrInvalidURI, truncate(name))
	}
	return nil
}

func validVersion(v string) bool {
	major, minor, dot := strings.Cut(v, ".")
	digits := func(s string) bool { return s != "" && strings.TrimLeft(s, "0123456789") == "" }
	return digits(major) && (!dot || digits(minor))
}

// unreserved plus RFC 7512's pk11-p-res-avail; the query also allows "/?|".
const (
	pathExtra  = "-._~:[]@!$'()*+,="
	queryExtra = pathExtra + "/?|"
)

func allowed(c byte, query bool) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	case query:
		return strings.IndexByte(queryExtra, c) >= 0
	default:
		return strings.IndexByte(pathExtra, c) >= 0
	}
}

// decode percent-decodes raw, refusing characters that must be encoded.
// Errors for pin-value do not quote the value.
func decode(name, raw string, query bool) (string, error) {
	secret := name == "pin-value"
	var b strings.Builder
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c == '%' {
			if i+2 >= len(raw) || !isHex(raw[i+1]) || !isHex(raw[i+2]) {
				if secret {
					return "", fmt.Errorf("%w: bad percent-encoding in %s", ErrInvalidURI, name)
				}
				return "", fmt.Errorf("%w: bad percent-encoding at byte %d of %s value %q", ErrInvalidURI, i, name, truncate(raw))
			}
			b.WriteByte(unhex(raw[i+1])<<4 | unhex(raw[i+2]))
			i += 2
			continue
		}
		if !allowed(c, query) {
			if secret {
				return "", fmt.Errorf("%w: character at byte %d of %s must be percent-encoded", ErrInvalidURI, i, name)
			}
			return "", fmt.Errorf("%w: character %q at byte %d of %s must be percent-encoded", ErrInvalidURI, c, i, name)
		}
		b.WriteByte(c)
	}
	return b.String(), nil
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}

func encode(s string, query bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if c := s[i]; allowed(c, query) {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func truncate(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	s = s[:max]
	for !utf8.ValidString(s) && len(s) > 0 {
		s = s[:len(s)-1]
	}
	return s + "..."
}

// String returns the canonical form: attributes in a fixed order, every
// character outside the RFC's allowed set percent-encoded, id fully
// percent-encoded. It omits pin-value so a URI can be logged and audited;
// everything else round-trips through ParseURI.
func (u *URI) String() string {
	if u == nil {
		return "<nil>"
	}
	var path []string
	add := func(name, val string) {
		if val != "" {
			path = append(path, name+"="+encode(val, false))
		}
	}
	add("token", u.Token)
	add("manufacturer", u.Manufacturer)
	add("serial", u.Serial)
	add("model", u.Model)
	add("library-manufacturer", u.LibraryManufacturer)
	add("library-description", u.LibraryDescription)
	add("library-version", u.LibraryVersion)
	add("slot-description", u.SlotDescription)
	add("slot-manufacturer", u.SlotManufacturer)
	if u.Slot != nil {
		path = append(path, "slot-id="+strconv.Itoa(*u.Slot))
	}
	add("object", u.Object)
	add("type", u.Type)
	if len(u.ID) > 0 {
		var b strings.Builder
		for _, c := range u.ID {
			fmt.Fprintf(&b, "%%%02X", c)
		}
		path = append(path, "id="+b.String())
	}
	var query []string
	addQ := func(name, val string) {
		if val != "" {
			query = append(query, name+"="+encode(val, true))
		}
	}
	addQ("module-name", u.ModuleName)
	addQ("module-path", u.ModulePath)
	addQ("pin-source", u.PinSource)
	s := scheme + strings.Join(path, ";")
	if len(query) > 0 {
		s += "?" + strings.Join(query, "&")
	}
	return s
}

// GoString keeps %#v from printing the PIN.
func (u *URI) GoString() string { return "pkcs11.URI(" + strconv.Quote(u.String()) + ")" }

// maxPINFile bounds what PIN reads from a pin-source file.
const maxPINFile = 4 << 10

// PIN returns the user PIN: the content of the pin-source file (one line;
// its trailing newline is dropped), the env:NAME variable, or pin-value. It is
// an ErrPIN error when none is given, the source is unreadable or the PIN
// is empty.
func (u *URI) PIN() (string, error) {
	switch {
	case u.PinValue != "":
		return u.PinValue, nil
	case u.PinSource == "":
		return "", fmt.Errorf("%w: URI has neither pin-source nor pin-value", ErrPIN)
	}
	src := u.PinSource
	var pin string
	switch {
	case strings.HasPrefix(src, "env:"):
		name := src[len("env:"):]
		v, ok := os.LookupEnv(name)
		if !ok {
			return "", fmt.Errorf("%w: pin-source environment variable %q is not set", ErrPIN, name)
		}
		pin = v
	case strings.HasPrefix(src, "file:") || strings.HasPrefix(src, "/"):
		path, err := filePath(src)
		if err != nil {
			return "", err
		}
		pin, err = readPINFile(path)
		if err != nil {
			return "", err
		}
	default:
		return "", fmt.Errorf("%w: pin-source %q: want file:/path, an absolute path or env:NAME", ErrPIN, truncate(src))
	}
	if pin == "" {
		return "", fmt.Errorf("%w: pin-source %q gives an empty PIN", ErrPIN, truncate(src))
	}
	return pin, nil
}

// filePath accepts file:/p, file:///p, file://localhost/p and /p.
func filePath(src string) (string, error) {
	p := src
	if rest, ok := strings.CutPrefix(p, "file:"); ok {
		p = rest
		if rest, ok := strings.CutPrefix(p, "//"); ok {
			host, _, _ := strings.Cut(rest, "/")
			if host != "" && host != "localhost" {
				return "", fmt.Errorf("%w: pin-source %q names a remote host", ErrPIN, truncate(src))
			}
			p = rest[len(host):]
		}
	}
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("%w: pin-source %q is not an absolute path", ErrPIN, truncate(src))
	}
	return p, nil
}

func readPINFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%w: pin-source: %w", ErrPIN, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPINFile+1))
	if err != nil {
		return "", fmt.Errorf("%w: pin-source: %w", ErrPIN, err)
	}
	if len(b) > maxPINFile {
		return "", fmt.Errorf("%w: pin-source file %s is larger than %d bytes", ErrPIN, path, maxPINFile)
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if strings.ContainsAny(s, "\r\n") {
		return "", fmt.Errorf("%w: pin-source file %s holds more than one line", ErrPIN, path)
	}
	return s, nil
}
