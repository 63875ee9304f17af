// Package store implements attestor.Store on a bbolt file. The bucket
// layout is documented in schema.go.
package store
