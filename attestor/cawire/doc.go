// Package cawire backs the attestor's NodeIssuer and Revoker with the CA and
// the revocation service, as palisade-server wires them; tests that need
// the real parts use the same adapters.
package cawire
