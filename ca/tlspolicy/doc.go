// Package tlspolicy owns the appliance's one TLS policy: TLS 1.3 only, with
// TLS_AES_256_GCM_SHA384 as the only cipher suite, for every listener and
// dialer of every Palisade binary.
//
// Go does not let tls.Config restrict TLS 1.3 suites, and a Go server picks
// TLS_AES_128_GCM_SHA256 whenever a client offers it. Importing this package
// narrows the standard library's TLS 1.3 suite lists (process-wide) so Go
// peers negotiate AES-256-GCM; the VerifyConnection hook installed by Server
// and Client is the safety net that refuses any other suite, e.g. from a
// foreign client that offers only AES-128.
package tlspolicy
