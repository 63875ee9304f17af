// Package enforcer holds the root-only end-to-end tests and benchmarks of
// the kernel enforcer, in network namespaces and veth pairs the tests
// create (build tag integration).
package enforcer
