package crl

import "strings"

// CRLURL is the CRL distribution point for an issuer, written into every
// certificate it signs: <base>/crl/<issuerKeyID>.crl. base is the
// appliance's HTTP base URL, e.g. "http://10.0.0.1:8080".
func CRLURL(base, issuerKeyID string) string {
	return strings.TrimRight(base, "/") + "/crl/" + issuerKeyID + ".crl"
}

// DeltaCRLURL is where the issuer's delta CRL is served (the Freshest CRL
// extension of the full CRL points here).
func DeltaCRLURL(base, issuerKeyID string) string {
	return strings.TrimRight(base, "/") + "/crl/" + issuerKeyID + "-delta.crl"
}

// CurrentCRLURL is the stable path of the active issuer's full CRL.
func CurrentCRLURL(base string) string { return strings.TrimRight(base, "/") + "/crl/current.crl" }

// OCSPURL is the AIA OCSP responder URL: <base>/ocsp.
func OCSPURL(base string) string { return strings.TrimRight(base, "/") + "/ocsp" }

// FeedURL is the long-poll revocation feed.
func FeedURL(base string) string { return strings.TrimRight(base, "/") + "/revocations" }

// IssuersURL lists the live intermediates (PEM), for Checker.
func IssuersURL(base string) string { return strings.TrimRight(base, "/") + "/crl/issuers.pem" }
