package enforcer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Mode selects whether the datapath drops or only reports.
type Mode uint32

const (
	// ModeEnforce drops what the policy does not allow. It is the zero value
	// so an unconfigured datapath fails closed.
	ModeEnforce Mode = 0
	// ModeAudit passes everything and reports would-be drops.
	ModeAudit Mode = 1
)

func (m Mode) String() string {
	switch m {
	case ModeEnforce:
		return "enforce"
	case ModeAudit:
		return "audit"
	}
	return fmt.Sprintf("mode(%d)", uint32(m))
}

// ParseMode parses "enforce" or "audit".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "enforce":
		return ModeEnforce, nil
	case "audit":
		return ModeAudit, nil
	}
	return 0, fmt.Errorf("%w: mode %q (want enforce or audit)", ErrConfig, s)
}

// Direction of a policy entry, seen from the local node.
type Direction uint8

const (
	// Inbound: the peer opens a flow to a local port.
	Inbound Direction = 0
	// Reply: the peer answers from a port of its own that the local node
	// may reach. A bare TCP SYN never matches a Reply entry.
	Reply Direction = 1
)

// IP protocol numbers used by policies.
const (
	ProtoICMP   uint8 = 1
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
	ProtoICMPv6 uint8 = 58
)

// Verdict of one packet in a flow event.
type Verdict uint8

const (
	VerdictPass  Verdict = 1
	VerdictDrop  Verdict = 2
	VerdictAudit Verdict = 3 // would have been dropped; audit mode passed it
)

func (v Verdict) String() string {
	switch v {
	case VerdictPass:
		return "pass"
	case VerdictDrop:
		return "drop"
	case VerdictAudit:
		return "audit"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// Reason explains a verdict; it matches enum reason in bpf/enforcer.c.
type Reason uint8

const (
	ReasonPolicy      Reason = 1
	ReasonAdmission   Reason = 2
	ReasonLinkControl Reason = 3
	ReasonPMTU        Reason = 4
	ReasonNotAdmitted Reason = 5
	ReasonExpired     Reason = 6
	ReasonNoPolicy    Reason = 7
	ReasonFragment    Reason = 8
	ReasonMalformed   Reason = 9
	ReasonUnsupported Reason = 10
	// CounterSuppressed counts flow events not written because of the
	// per-source and per-CPU rate limits (it is not a verdict reason).
	CounterSuppressed Reason = 15
)

// numReasonCounters is the size of the kernel's counters array.
const numReasonCounters = 16

var reasonNames = map[Reason]string{
	ReasonPolicy: "policy", ReasonAdmission: "admission-port", ReasonLinkControl: "link-control",
	ReasonPMTU: "pmtu", ReasonNotAdmitted: "not-admitted", ReasonExpired: "expired",
	ReasonNoPolicy: "no-policy", ReasonFragment: "fragment", ReasonMalformed: "malformed",
	ReasonUnsupported: "unsupported-l3", CounterSuppressed: "events-suppressed",
}

func (r Reason) String() string {
	if s, ok := reasonNames[r]; ok {
		return s
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// PolicyKey is one allow entry of the kernel policy map.
type PolicyKey struct {
	Identity uint32
	Port     uint16 // 0 for ICMP
	Proto    uint8
	Dir      Direction
}

// PeerEntry is one admitted peer in the kernel map.
type PeerEntry struct {
	Ifindex  int
	Addr     netip.Addr
	Identity uint32
	Expires  time.Time // wall clock, converted from CLOCK_BOOTTIME
}

// FlowEvent is one record of the kernel's flow ring buffer.
type FlowEvent struct {
	Time     time.Time
	Ifindex  int
	Identity uint32
	Src, Dst netip.Addr
	SrcPort  uint16 // ICMP: type<<8 | code
	DstPort  uint16
	Proto    uint8
	Verdict  Verdict
	Reason   Reason
	TCPFlags uint8
}

// DatapathOptions configures OpenDatapath.
type DatapathOptions struct {
	// PinDir is a directory on bpffs (e.g. /sys/fs/bpf/palisade) where maps,
	// the program and links are pinned. Empty: nothing is pinned, and
	// everything goes away with the process (tests only).
	PinDir string
}

// Datapath is the loaded eBPF program and its maps.
type Datapath struct {
	objs   palisadeObjects
	pinDir string
}

// OpenDatapath loads the program. With a PinDir it reuses maps already
// pinned there (adoption after a restart) and pins new ones; a pinned map
// whose layout changed is an error, and the old program keeps enforcing.
func OpenDatapath(o DatapathOptions) (*Datapath, error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("enforcer: memlock: %w", err)
	}
	opts := &ebpf.CollectionOptions{}
	if o.PinDir != "" {
		if err := os.MkdirAll(filepath.Join(o.PinDir, "links"), 0o700); err != nil {
			return nil, fmt.Errorf("enforcer: pin dir: %w", err)
		}
		var st unix.Statfs_t
		if err := unix.Statfs(o.PinDir, &st); err != nil {
			return nil, fmt.Errorf("enforcer: pin dir: %w", err)
		}
		if st.Type != unix.BPF_FS_MAGIC {
			return nil, fmt.Errorf("%w: %s is not on bpffs", ErrConfig, o.PinDir)
		}
		opts.Maps.PinPath = o.PinDir
	}
	spec, err := loadPalisade()
	if err != nil {
		return nil, fmt.Errorf("enforcer: datapath spec: %w", err)
	}
	if o.PinDir == "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	}
	d := &Datapath{pinDir: o.PinDir}
	if err := spec.LoadAndAssign(&d.objs, opts); err != nil {
		return nil, fmt.Errorf("enforcer: load datapath: %w", err)
	}
	if o.PinDir != "" {
		for _, h := range []hook{ingress, egress} {
			prog, pin := d.prog(h)
			// Pin under a temporary name, then rename over the old pin:
			// the path always names a working program.
			tmp := pin + "_new"
			_ = os.Remove(tmp)
			if err := prog.Pin(tmp); err != nil {
				d.Close()
				return nil, fmt.Errorf("enforcer: pin program: %w", err)
			}
			if err := os.Rename(tmp, pin); err != nil {
				_ = os.Remove(tmp)
				d.Close()
				return nil, fmt.Errorf("enforcer: pin program: %w", err)
			}
		}
	}
	return d, nil
}

// Close releases file descriptors. Pinned maps, program and links stay,
// so enforcement continues without the daemon (fail closed).
func (d *Datapath) Close() error { return d.objs.Close() }

// Program returns the ingress program (for benchmarks and tests).
func (d *Datapath) Program() *ebpf.Program { return d.objs.PalisadeIngress }

// EmptyProgram returns a program that passes everything: the baseline
// against which the per-packet cost of Program is measured.
func (d *Datapath) EmptyProgram() *ebpf.Program { return d.objs.PalisadeEmpty }

// SetConfig writes the mode and admission port. Call it before attaching:
// an unconfigured datapath drops the admission port too.
func (d *Datapath) SetConfig(mode Mode, admissionPort uint16) error {
	if mode != ModeEnforce && mode != ModeAudit {
		return fmt.Errorf("%w: %v", ErrConfig, mode)
	}
	v := palisadeConfig{Mode: uint32(mode), AdmissionPort: admissionPort}
	if err := d.objs.ConfigMap.Put(uint32(0), &v); err != nil {
		return fmt.Errorf("enforcer: write config: %w", err)
	}
	return nil
}

func addr16(a netip.Addr) [16]byte {
	return a.Unmap().As16() // IPv4 becomes ::ffff:a.b.c.d, as in the kernel
}

func fromAddr16(b [16]byte) netip.Addr { return netip.AddrFrom16(b).Unmap() }

// PutPeer admits a peer until e.Expires. An expiry in the past is refused.
func (d *Datapath) PutPeer(e PeerEntry) error {
	if !e.Addr.IsValid() || e.Ifindex <= 0 {
		return fmt.Errorf("%w: peer needs an address and an ifindex", ErrConfig)
	}
	exp, err := toBoot(e.Expires)
	if err != nil {
		return err
	}
	k := palisadePeerKey{Ifindex: uint32(e.Ifindex), Addr: addr16(e.Addr)}
	v := palisadePeerValue{Identity: e.Identity, ExpiresNs: exp}
	if err := d.objs.Peers.Put(&k, &v); err != nil {
		return fmt.Errorf("enforcer: write peer %v: %w", e.Addr, err)
	}
	return nil
}

// DeletePeer removes an admission; the next packet of every flow from
// that source is dropped. A missing entry is not an error.
func (d *Datapath) DeletePeer(ifindex int, addr netip.Addr) error {
	k := palisadePeerKey{Ifindex: uint32(ifindex), Addr: addr16(addr)}
	if err := d.objs.Peers.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("enforcer: delete peer %v: %w", addr, err)
	}
	return nil
}

// Peers lists the admitted peers, expired ones included.
func (d *Datapath) Peers() ([]PeerEntry, error) {
	var (
		k   palisadePeerKey
		v   palisadePeerValue
		out []PeerEntry
	)
	it := d.objs.Peers.Iterate()
	for it.Next(&k, &v) {
		out = append(out, PeerEntry{Ifindex: int(k.Ifindex), Addr: fromAddr16(k.Addr),
			Identity: v.Identity, Expires: fromBoot(v.ExpiresNs)})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("enforcer: list peers: %w", err)
	}
	return out, nil
}

// SyncPolicy makes the kernel policy map hold exactly want.
func (d *Datapath) SyncPolicy(want map[PolicyKey]bool) error {
	have, err := d.PolicyEntries()
	if err != nil {
		return err
	}
	// Add before removing so a rule kept across a reload never blinks.
	for pk := range want {
		if have[pk] {
			continue
		}
		if err := d.objs.Policy.Put(kernelPolicyKey(pk), uint32(1)); err != nil {
			return fmt.Errorf("enforcer: write policy entry %+v: %w", pk, err)
		}
	}
	for pk := range have {
		if want[pk] {
			continue
		}
		if err := d.objs.Policy.Delete(kernelPolicyKey(pk)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("enforcer: delete policy entry %+v: %w", pk, err)
		}
	}
	return nil
}

// kernelPolicyKey converts a PolicyKey to the policy map's key layout.
func kernelPolicyKey(pk PolicyKey) *palisadePolicyKey {
	return &palisadePolicyKey{Identity: pk.Identity, Port: pk.Port, Proto: pk.Proto, Dir: uint8(pk.Dir)}
}

// PolicyEntries lists the kernel policy map.
func (d *Datapath) PolicyEntries() (map[PolicyKey]bool, error) {
	out := map[PolicyKey]bool{}
	var (
		k palisadePolicyKey
		v uint32
	)
	it := d.objs.Policy.Iterate()
	for it.Next(&k, &v) {
		out[PolicyKey{k.Identity, k.Port, k.Proto, Direction(k.Dir)}] = true
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("enforcer: read policy map: %w", err)
	}
	return out, nil
}

// AdmissionIfindex returns the interface on which the datapath saw TCP
// from remote to the admission port: the key for that peer's entry.
func (d *Datapath) AdmissionIfindex(remote netip.AddrPort) (int, error) {
	k := palisadeSeenKey{Addr: addr16(remote.Addr()), Port: remote.Port()}
	var ifindex uint32
	if err := d.objs.AdmissionSeen.Lookup(&k, &ifindex); err != nil {
		return 0, fmt.Errorf("%w: %v: %w", ErrUnknownIngress, remote, err)
	}
	return int(ifindex), nil
}

// AdmitRequest asks for on-demand admission to Addr (seen as the
// destination of a bare TCP SYN on Ifindex without an admission).
type AdmitRequest struct {
	Ifindex int
	Addr    netip.Addr
	DstPort uint16
}

// AdmitRequestReader reads on-demand admission requests.
type AdmitRequestReader struct{ rd *ringbuf.Reader }

// AdmitRequests opens the egress program's request ring.
func (d *Datapath) AdmitRequests() (*AdmitRequestReader, error) {
	rd, err := ringbuf.NewReader(d.objs.AdmitRequests)
	if err != nil {
		return nil, fmt.Errorf("enforcer: open admission request ring: %w", err)
	}
	return &AdmitRequestReader{rd: rd}, nil
}

// SetDeadline makes Read return os.ErrDeadlineExceeded after t.
func (r *AdmitRequestReader) SetDeadline(t time.Time) { r.rd.SetDeadline(t) }

// Read blocks for the next request; after Close it returns io.EOF.
func (r *AdmitRequestReader) Read() (AdmitRequest, error) {
	rec, err := r.rd.Read()
	if err != nil {
		if errors.Is(err, ringbuf.ErrClosed) {
			return AdmitRequest{}, io.EOF
		}
		return AdmitRequest{}, err
	}
	var q palisadeAdmitRequest
	if _, err := binary.Decode(rec.RawSample, binary.NativeEndian, &q); err != nil {
		return AdmitRequest{}, fmt.Errorf("enforcer: short admission request: %w", err)
	}
	return AdmitRequest{Ifindex: int(q.Ifindex), Addr: fromAddr16(q.Addr), DstPort: q.Dport}, nil
}

// Close unblocks Read.
func (r *AdmitRequestReader) Close() error { return r.rd.Close() }

// EgressProgram returns the on-demand admission program (tests).
func (d *Datapath) EgressProgram() *ebpf.Program { return d.objs.PalisadeEgress }

// Counters sums the per-CPU packet counters by reason.
func (d *Datapath) Counters() (map[Reason]uint64, error) {
	out := map[Reason]uint64{}
	for i := uint32(1); i < numReasonCounters; i++ {
		var per []uint64
		if err := d.objs.Counters.Lookup(i, &per); err != nil {
			return nil, fmt.Errorf("enforcer: read counters: %w", err)
		}
		var sum uint64
		for _, c := range per {
			sum += c
		}
		if sum != 0 {
			out[Reason(i)] = sum
		}
	}
	return out, nil
}

// FlowReader reads flow events from the kernel ring buffer. One reader at
// a time per datapath.
type FlowReader struct{ rd *ringbuf.Reader }

// Flows opens the flow ring buffer.
func (d *Datapath) Flows() (*FlowReader, error) {
	rd, err := ringbuf.NewReader(d.objs.Flows)
	if err != nil {
		return nil, fmt.Errorf("enforcer: open flow ring: %w", err)
	}
	return &FlowReader{rd: rd}, nil
}

// SetDeadline makes Read return os.ErrDeadlineExceeded after t.
func (r *FlowReader) SetDeadline(t time.Time) { r.rd.SetDeadline(t) }

// Read blocks for the next event. After Close it returns io.EOF.
func (r *FlowReader) Read() (FlowEvent, error) {
	rec, err := r.rd.Read()
	if err != nil {
		if errors.Is(err, ringbuf.ErrClosed) {
			return FlowEvent{}, io.EOF
		}
		return FlowEvent{}, err
	}
	return decodeFlowEvent(rec.RawSample)
}

// Close unblocks Read.
func (r *FlowReader) Close() error { return r.rd.Close() }

func decodeFlowEvent(b []byte) (FlowEvent, error) {
	var e palisadeFlowEvent
	if _, err := binary.Decode(b, binary.NativeEndian, &e); err != nil {
		return FlowEvent{}, fmt.Errorf("enforcer: short flow event (%d bytes): %w", len(b), err)
	}
	return FlowEvent{
		Time: fromBoot(e.TsNs), Ifindex: int(e.Ifindex), Identity: e.Identity,
		Src: fromAddr16(e.Saddr), Dst: fromAddr16(e.Daddr), SrcPort: e.Sport, DstPort: e.Dport,
		Proto: e.Proto, Verdict: Verdict(e.Verdict), Reason: Reason(e.Reason), TCPFlags: e.TcpFlags,
	}, nil
}

// bootNow reads CLOCK_BOOTTIME, the clock of bpf_ktime_get_boot_ns.
func bootNow() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		panic("enforcer: CLOCK_BOOTTIME: " + err.Error()) // always present on Linux
	}
	return uint64(ts.Nano())
}

func toBoot(t time.Time) (uint64, error) {
	d := time.Until(t)
	if d <= 0 {
		return 0, fmt.Errorf("%w: expiry %v is in the past", ErrExpired, t)
	}
	return bootNow() + uint64(d), nil
}

func fromBoot(ns uint64) time.Time {
	now := bootNow()
	return time.Now().Add(time.Duration(int64(ns) - int64(now)))
}
