// Package enforcer owns Palisade's kernel enforcer: an eBPF program at
// TCX ingress (classic tc clsact fallback) that admits only peers which
// proved a valid, unrevoked SVID over mutual TLS, then applies identity
// policy to them. See docs/enforcer.md for the design and what
// anti-spoofing remains.
//
// Entry points:
//   - OpenDatapath / Datapath: load or adopt the pinned program and maps,
//     Attach/Detach interfaces, write peers, policy and mode, read flows.
//
// The C source is bpf/enforcer.c; datapath_bpf_bpfel.{go,o} are generated
// by `go generate ./enforcer/` (bpf2go, clang) and committed, so building
// needs no clang. Regeneration is byte-identical with the same clang.
package enforcer
