// Package netns owns the network plumbing of root-only end-to-end tests:
// network namespaces and veth pairs the test creates (and deletes at
// cleanup), running code on a thread switched into a namespace, a private
// bpffs for pins, and TCP echo servers and probes inside namespaces (reach,
// silent drop, and how long after an event an established flow is cut).
// test/enforcer and test/agent use it.
package netns
