// Package agent holds the end-to-end tests of palisade-agent (build tag
// integration): the real binary against a real palisade-server (SoftHSM
// token, key ceremony) with swtpm as the node's TPM, openssl and go-spiffe
// as independent verifiers, and the operator CLI for manifest, PCR policy
// and bans; the enforcer suite runs agents in network namespaces.
package agent
