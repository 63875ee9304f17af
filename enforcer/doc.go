// Package enforcer owns Palisade's kernel enforcer: an eBPF program at TCX
// ingress (classic tc clsact fallback) that admits only peers which proved
// a valid, unrevoked X509-SVID over mutual TLS 1.3, then applies identity
// policy to them. Design and remaining anti-spoofing gaps: docs/enforcer.md.
//
// Entry points:
//
//   - Agent: NewAgent(ctx, Config, Deps) then Run(ctx) — what
//     cmd/palisade-agent runs. Deps carries the node's SVID source, the
//     RevocationChecker (revocation package) and an optional BanChecker.
//     ReloadPolicy re-reads the policy file (e.g. on SIGHUP);
//     Admitter().Recheck() applies a revocation update immediately.
//   - Policy as code: LoadPolicy / ParsePolicy, CheckPolicyFile (for
//     `palisade policy check FILE`), Drift + DriftReport.Format (for
//     `palisade policy drift POLICY FLOWLOG`), ReadFlowLog + FormatFlows
//     (for `palisade flows FLOWLOG`).
//   - Lower level: OpenDatapath / Datapath (pinned maps, Attach /
//     AttachEgress / Detach, peers, policy entries, counters, flow and
//     admission-request rings, BPF run stats), Uninstall (operator
//     removal: `palisade-agent uninstall`), Verifier and Admitter.
//
// The C source is bpf/enforcer.c; datapath_bpf_bpfel.{go,o} are generated
// by `go generate ./enforcer/` (bpf2go + clang, Debian's multiarch include
// dir) and committed, so building needs no clang. Regeneration with the same
// clang is byte-identical: CI runs
// `go generate ./enforcer/ && git diff --exit-code enforcer/`.
package enforcer
