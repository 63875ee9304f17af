// Package castore adapts the CA's bbolt store (ca/store) to crl.Store, so
// the server wires revocation with one line:
//
//	crl.New(cfg, crl.Options{Store: castore.New(st), ...})
package castore
