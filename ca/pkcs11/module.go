package pkcs11

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	p11 "github.com/miekg/pkcs11"
)

// DefaultModuleDirs are searched for a module-name when the URI has no
// module-path.
var DefaultModuleDirs = []string{
	"/usr/lib/x86_64-linux-gnu/pkcs11",
	"/usr/lib/pkcs11",
	"/usr/local/lib/pkcs11",
}

// resolveModule returns the module file for u: module-path wins over
// module-name (RFC 7512 section 2.3). The path is made canonical because
// the library keeps one state per loaded file, whatever path loaded it.
func resolveModule(u *URI, dirs []string) (string, error) {
	path := u.ModulePath
	if path == "" {
		if u.ModuleName == "" {
			return "", fmt.Errorf("%w: %s has neither module-path nor module-name", ErrInvalidURI, u)
		}
		if strings.ContainsRune(u.ModuleName, '/') {
			return "", fmt.Errorf("%w: module-name %q must not contain '/' (use module-path)", ErrInvalidURI, u.ModuleName)
		}
		for _, dir := range dirs {
			for _, name := range []string{u.ModuleName, u.ModuleName + ".so"} {
				p := filepath.Join(dir, name)
				if _, err := os.Stat(p); err == nil {
					path = p
					break
				}
			}
			if path != "" {
				break
			}
		}
		if path == "" {
			return "", fmt.Errorf("%w: module-name %q not found in %s", ErrModule, u.ModuleName, strings.Join(dirs, ", "))
		}
	}
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("%w: module-path %q is not absolute", ErrInvalidURI, path)
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrModule, path, err)
	}
	return real, nil
}

// registry tracks the crypto11 Contexts this process holds. crypto11
// initialises a module when its first Context opens and finalises it when
// the last one closes; the preflight below must leave it in that state.
// Only this package uses crypto11, so these counts match crypto11's own.
var registry = struct {
	modules map[string]int          // module path -> open Contexts
	logins  map[string]*loginRecord // module path + token identity -> login
}{modules: map[string]int{}, logins: map[string]*loginRecord{}}

// registryMu serialises every Configure and Close, and the preflight.
var registryMu = make(chan struct{}, 1)

func lockRegistry()   { registryMu <- struct{}{} }
func unlockRegistry() { <-registryMu }

// loginRecord remembers the PIN hash of a token this process is logged in
// to. PKCS#11 login state is per process and token: a second login answers
// CKR_USER_ALREADY_LOGGED_IN without checking the PIN, so later opens are
// checked against the PIN the token accepted.
type loginRecord struct {
	pinHash [32]byte
	n       int
}

// found is what the preflight learnt about the token.
type found struct {
	slot          uint
	info          p11.TokenInfo
	loginRequired bool
}

func clean(s string) string { return strings.TrimRight(s, " \x00") }

func tokenKey(module string, ti p11.TokenInfo) string {
	return module + "\x00" + clean(ti.ManufacturerID) + "\x00" + clean(ti.Model) + "\x00" + clean(ti.SerialNumber) + "\x00" + clean(ti.Label)
}

// preflight loads the module on its own handle, finds the one token the URI
// selects and checks the PIN, so that crypto11.Configure (which finalises
// the module on any failure, breaking other Contexts) only runs when it
// will succeed. The caller holds the registry lock.
func preflight(module string, u *URI, pin string) (found, error) {
	var f found
	ctx := p11.New(module)
	if ctx == nil {
		return f, fmt.Errorf("%w: %s: cannot load library (missing file, wrong architecture or not a PKCS#11 module)", ErrModule, module)
	}
	defer ctx.Destroy()
	if registry.modules[module] == 0 {
		err := ctx.Initialize()
		if errors.Is(err, p11.Error(p11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
			// Left initialised by a Context whose Close failed half-way
			// (crypto11 skips the rest after a C_Finalize error); no one
			// else uses it, so start over.
			_ = ctx.Finalize()
			err = ctx.Initialize()
		}
		if err != nil {
			return f, fmt.Errorf("%w: %s: C_Initialize: %w", ErrModule, module, err)
		}
		defer ctx.Finalize()
	}
	info, err := ctx.GetInfo()
	if err != nil {
		return f, fmt.Errorf("%w: %s: C_GetInfo: %w", ErrModule, module, err)
	}
	if err := matchLibrary(u, info); err != nil {
		return f, fmt.Errorf("%w: %s: %w", ErrModule, module, err)
	}
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return f, fmt.Errorf("%w: %s: C_GetSlotList: %w", ErrModule, module, err)
	}
	var matches []found
	for _, slot := range slots {
		si, err := ctx.GetSlotInfo(slot)
		if err != nil {
			continue // a slot that vanished while listing
		}
		ti, err := ctx.GetTokenInfo(slot)
		if err != nil {
			continue
		}
		if matchToken(u, slot, si, ti) {
			matches = append(matches, found{slot: slot, info: ti, loginRequired: ti.Flags&p11.CKF_LOGIN_REQUIRED != 0})
		}
	}
	sel := tokenSelector(u)
	switch len(matches) {
	case 0:
		return f, fmt.Errorf("%w: no token matching %s in module %s (%d tokens present)", ErrTokenNotFound, sel, module, len(slots))
	case 1:
		f = matches[0]
	default:
		return f, fmt.Errorf("%w: %d tokens match %s in module %s; add serial= or slot-id=", ErrTokenAmbiguous, len(matches), sel, module)
	}
	if pin == "" {
		if f.loginRequired {
			return f, fmt.Errorf("%w: token %q in module %s requires login and no PIN was given", ErrPIN, clean(f.info.Label), module)
		}
		return f, nil
	}
	key := tokenKey(module, f.info)
	if rec := registry.logins[key]; rec != nil {
		h := sha256.Sum256([]byte(pin))
		if subtle.ConstantTimeCompare(h[:], rec.pinHash[:]) != 1 {
			return f, fmt.Errorf("%w: token %q in module %s: PIN differs from the one this process logged in with", ErrPINIncorrect, clean(f.info.Label), module)
		}
		return f, nil
	}
	sess, err := ctx.OpenSession(f.slot, p11.CKF_SERIAL_SESSION)
	if err != nil {
		return f, fmt.Errorf("%w: token %q in module %s: C_OpenSession: %w", ErrHSMUnavailable, clean(f.info.Label), module, err)
	}
	defer ctx.CloseSession(sess)
	err = ctx.Login(sess, p11.CKU_USER, pin)
	var pe p11.Error
	switch {
	case err == nil:
		// crypto11 logs in again on its own session.
		_ = ctx.Logout(sess)
	case errors.As(err, &pe) && pe == p11.CKR_USER_ALREADY_LOGGED_IN:
	default:
		return f, fmt.Errorf("token %q in module %s: login: %w", clean(f.info.Label), module, classify(err))
	}
	return f, nil
}

func matchLibrary(u *URI, info p11.Info) error {
	if u.LibraryManufacturer != "" && u.LibraryManufacturer != clean(info.ManufacturerID) {
		return fmt.Errorf("library-manufacturer is %q, URI wants %q", clean(info.ManufacturerID), u.LibraryManufacturer)
	}
	if u.LibraryDescription != "" && u.LibraryDescription != clean(info.LibraryDescription) {
		return fmt.Errorf("library-description is %q, URI wants %q", clean(info.LibraryDescription), u.LibraryDescription)
	}
	if u.LibraryVersion != "" {
		major, minor, hasMinor := strings.Cut(u.LibraryVersion, ".")
		v := info.LibraryVersion
		if major != strconv.Itoa(int(v.Major)) || hasMinor && minor != strconv.Itoa(int(v.Minor)) {
			return fmt.Errorf("library-version is %d.%d, URI wants %s", v.Major, v.Minor, u.LibraryVersion)
		}
	}
	return nil
}

func matchToken(u *URI, slot uint, si p11.SlotInfo, ti p11.TokenInfo) bool {
	eq := func(want, have string) bool { return want == "" || want == clean(have) }
	return eq(u.Token, ti.Label) && eq(u.Manufacturer, ti.ManufacturerID) && eq(u.Serial, ti.SerialNumber) &&
		eq(u.Model, ti.Model) && eq(u.SlotDescription, si.SlotDescription) &&
		eq(u.SlotManufacturer, si.ManufacturerID) && (u.Slot == nil || uint(*u.Slot) == slot)
}

// tokenSelector renders the token-selecting attributes of u.
func tokenSelector(u *URI) string {
	sel := &URI{Token: u.Token, Manufacturer: u.Manufacturer, Serial: u.Serial, Model: u.Model,
		SlotDescription: u.SlotDescription, SlotManufacturer: u.SlotManufacturer, Slot: u.Slot}
	return sel.String()
}

func hasTokenSelector(u *URI) bool {
	return u.Token != "" || u.Manufacturer != "" || u.Serial != "" || u.Model != "" ||
		u.SlotDescription != "" || u.SlotManufacturer != "" || u.Slot != nil
}
