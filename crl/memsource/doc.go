// Package memsource is an in-memory crl.Store for tests and benchmarks.
// It is not durable.
package memsource
