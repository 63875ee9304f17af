// Package test holds Palisade's integration and end-to-end suites (under
// build tag "integration", run by `make test`) and the helpers they share.
package test
