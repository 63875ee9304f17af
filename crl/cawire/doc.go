// Package cawire adapts the CA (package ca) to the crl package's Issuers,
// so palisade-server wires revocation without glue code of its own.
package cawire
