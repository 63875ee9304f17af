// Package crl is Palisade's in-enclave revocation: revoking serials and
// nodes, full and delta CRLs, an RFC 6960 OCSP responder with pre-signed
// responses, a long-poll revocation feed, and Checker, the client side the
// enforcer uses.
//
// The package owns no certificate records. It reads them through Source and
// writes revocations through Store (both implemented by the CA's bbolt
// store), signs through crypto.Signer (the HSM), and keeps only one durable
// file of its own: the CRL numbers, in Config.DataDir. The delegated OCSP
// responder certificates it has the issuers sign are recorded through
// Store and audited before they are used, as the CA's own issuances are.
//
// Entry points for the server:
//
//	svc, err := crl.New(cfg, crl.Options{...})
//	go svc.Run(ctx)                 // builds CRLs, pre-signs OCSP, refreshes
//	handler := svc.Handler()        // /crl/..., /ocsp, /revocations
//	hs := svc.NewHTTPServer(&http.Server{Handler: root}) // lean OCSP path, root for the rest
//	svc.Issued(serial, keyID, notAfter)  // from the CA after each issuance
//	svc.Revoke(ctx, actor, serial, reason); svc.RevokeNode(ctx, actor, node, reason)
//
// URLs written into certificates come from CRLURL and OCSPURL so the CA and
// the server agree on them.
package crl
