package enforcer

import (
	"errors"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/palisade-id/palisade/test/testenv"
)

const (
	retPass = ^uint32(0) // TC_ACT_UNSPEC (-1): TCX_NEXT
	retDrop = 2          // TC_ACT_SHOT
)

func openTestDatapath(t *testing.T) *Datapath {
	t.Helper()
	testenv.RequireRoot(t)
	d, err := OpenDatapath(DatapathOptions{})
	if err != nil {
		t.Fatalf("OpenDatapath: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func run(t *testing.T, p *ebpf.Program, pkt []byte, ifindex uint32) uint32 {
	t.Helper()
	ret, err := p.Run(&ebpf.RunOptions{Data: pkt, Context: skbCtx{IngressIfindex: ifindex}})
	if err != nil {
		t.Fatalf("prog.Run: %v", err)
	}
	return ret
}

var (
	peer4  = netip.MustParseAddr("10.99.0.2")
	local4 = netip.MustParseAddr("10.99.0.1")
	peer6  = netip.MustParseAddr("fd99::2")
	local6 = netip.MustParseAddr("fd99::1")
	other4 = netip.MustParseAddr("10.99.0.3")
)

const (
	ifIn       = 7
	ifOther    = 8
	admPort    = 7443
	identityA  = 42
	identityNo = 43 // admitted, nothing allowed
)

func TestVerdicts(t *testing.T) {
	d := openTestDatapath(t)
	if err := d.SetConfig(ModeEnforce, admPort); err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	for _, e := range []PeerEntry{
		{Ifindex: ifIn, Addr: peer4, Identity: identityA, Expires: exp},
		{Ifindex: ifIn, Addr: peer6, Identity: identityA, Expires: exp},
		{Ifindex: ifIn, Addr: other4, Identity: identityNo, Expires: exp},
	} {
		if err := d.PutPeer(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.SyncPolicy(map[PolicyKey]bool{
		{identityA, 8080, ProtoTCP, Inbound}: true,
		{identityA, 53, ProtoUDP, Inbound}:   true,
		{identityA, 0, ProtoICMP, Inbound}:   true,
		{identityA, 443, ProtoTCP, Reply}:    true,
	}); err != nil {
		t.Fatal(err)
	}
	stranger := netip.MustParseAddr("10.99.0.66")
	tests := []struct {
		name    string
		pkt     []byte
		ifindex uint32
		want    uint32
		reason  Reason
	}{
		{"arp passes", arpFrame(), ifIn, retPass, ReasonLinkControl},
		{"admission port open to strangers", frame{src: stranger, dst: local4, proto: ProtoTCP, sport: 40000, dport: admPort, tcpFlags: tcpSYN}.bytes(), ifIn, retPass, ReasonAdmission},
		{"stranger SYN dropped", frame{src: stranger, dst: local4, proto: ProtoTCP, sport: 40000, dport: 8080, tcpFlags: tcpSYN}.bytes(), ifIn, retDrop, ReasonNotAdmitted},
		{"admitted allowed port", frame{src: peer4, dst: local4, proto: ProtoTCP, sport: 40000, dport: 8080, tcpFlags: tcpSYN}.bytes(), ifIn, retPass, ReasonPolicy},
		{"ipv4 options before an allowed port", frame{src: peer4, dst: local4, proto: ProtoTCP, sport: 40000, dport: 8080, tcpFlags: tcpSYN, ipv4Options: 10}.bytes(), ifIn, retPass, ReasonPolicy},
		{"ipv4 options hide a denied port", frame{src: peer4, dst: local4, proto: ProtoTCP, sport: 40000, dport: 9090, tcpFlags: tcpSYN, ipv4Options: 3}.bytes(), ifIn, retDrop, ReasonNoPolicy},
		{"admitted other port", frame{src: peer4, dst: local4, proto: ProtoTCP, sport: 40000, dport: 9090, tcpFlags: tcpSYN}.bytes(), ifIn, retDrop, ReasonNoPolicy},
		{"admitted UDP to TCP-only port", frame{src: peer4, dst: local4, proto: ProtoUDP, sport: 40000, dport: 8080}.bytes(), ifIn, retDrop, ReasonNoPolicy},
		{"admitted UDP allowed", frame{src: peer4, dst: local4, proto: ProtoUDP, sport: 40000, dport: 53}.bytes(), ifIn, retPass, ReasonPolicy},
		{"admitted ICMP echo", frame{src: peer4, dst: local4, proto: ProtoICMP, icmpType: 8}.bytes(), ifIn, retPass, ReasonPolicy},
		{"spoofed source on other interface", frame{src: peer4, dst: local4, proto: ProtoTCP, sport: 40000, dport: 8080, tcpFlags: tcpSYN}.bytes(), ifOther, retDrop, ReasonNotAdmitted},
		{"identity without rules", frame{src: other4, dst: local4, proto: ProtoTCP, sport: 40000, dport: 8080, tcpFlags: tcpSYN}.bytes(), ifIn, retDrop, ReasonNoPolicy},
		{"reply from reachable service", frame{src: peer4, dst: local4, proto: ProtoTCP, sport: 443, dport: 50000, tcpFlags: tcpSYN | tcpACK}.bytes(), ifIn, retPass, ReasonPolicy},
		{"bare SYN from reply port", frame{src: peer4, dst: local4, proto: ProtoTCP, sport: 443, dport: 50000, tcpFlags: tcpSYN}.bytes(), ifIn, retDrop, ReasonNoPolicy},
		{"ipv4 non-first fragment", frame{src: peer4, dst: local4, proto: ProtoTCP, sport: 40000, dport: 8080, fragOff: 10}.bytes(), ifIn, retDrop, ReasonFragment},
		{"ipv4 truncated", frame{src: peer4, dst: local4, proto: ProtoTCP, sport: 40000, dport: 8080, truncate: 26}.bytes(), ifIn, retDrop, ReasonMalformed},
		{"icmp frag needed passes", frame{src: stranger, dst: local4, proto: ProtoICMP, icmpType: 3, icmpCode: 4}.bytes(), ifIn, retPass, ReasonPMTU},
		{"icmp echo from stranger", frame{src: stranger, dst: local4, proto: ProtoICMP, icmpType: 8}.bytes(), ifIn, retDrop, ReasonNotAdmitted},
		{"ipv6 admitted allowed port", frame{src: peer6, dst: local6, proto: ProtoTCP, sport: 40000, dport: 8080, tcpFlags: tcpSYN}.bytes(), ifIn, retPass, ReasonPolicy},
		{"ipv6 stranger", frame{src: netip.MustParseAddr("fd99::66"), dst: local6, proto: ProtoTCP, sport: 40000, dport: 8080, tcpFlags: tcpSYN}.bytes(), ifIn, retDrop, ReasonNotAdmitted},
		{"ipv6 hop-by-hop then TCP", frame{src: peer6, dst: local6, proto: ProtoTCP, sport: 40000, dport: 8080, tcpFlags: tcpSYN, v6ext: []uint8{0, 60}}.bytes(), ifIn, retPass, ReasonPolicy},
		{"ipv6 ext headers hide a denied port", frame{src: peer6, dst: local6, proto: ProtoTCP, sport: 40000, dport: 9090, tcpFlags: tcpSYN, v6ext: []uint8{0, 60}}.bytes(), ifIn, retDrop, ReasonNoPolicy},
		{"ipv6 first fragment evaluated", frame{src: peer6, dst: local6, proto: ProtoTCP, sport: 40000, dport: 8080, tcpFlags: tcpSYN, v6ext: []uint8{44}}.bytes(), ifIn, retPass, ReasonPolicy},
		{"ipv6 non-first fragment", frame{src: peer6, dst: local6, proto: ProtoTCP, sport: 40000, dport: 8080, v6ext: []uint8{44}, fragOff: 100}.bytes(), ifIn, retDrop, ReasonFragment},
		{"ipv6 extension chain too long", frame{src: peer6, dst: local6, proto: ProtoTCP, sport: 40000, dport: 8080, v6ext: []uint8{0, 60, 60, 60, 60, 60, 60}}.bytes(), ifIn, retDrop, ReasonMalformed},
		{"ipv6 neighbour solicitation", frame{src: netip.MustParseAddr("fe80::66"), dst: local6, proto: ProtoICMPv6, icmpType: 135, hopLimit: 255}.bytes(), ifIn, retPass, ReasonLinkControl},
		{"ipv6 off-link neighbour solicitation", frame{src: netip.MustParseAddr("fe80::66"), dst: local6, proto: ProtoICMPv6, icmpType: 135, hopLimit: 64}.bytes(), ifIn, retDrop, ReasonNotAdmitted},
		{"ipv6 packet too big", frame{src: netip.MustParseAddr("fd99::66"), dst: local6, proto: ProtoICMPv6, icmpType: 2}.bytes(), ifIn, retPass, ReasonPMTU},
		{"unsupported ethertype", frame{src: peer4, dst: local4, proto: ProtoTCP, ethType: 0x88cc}.bytes(), ifIn, retDrop, ReasonUnsupported},
		{"ipv6 ethertype carrying ipv4", frame{src: peer4, dst: local4, proto: ProtoTCP, sport: 1, dport: 8080, ethType: 0x86dd}.bytes(), ifIn, retDrop, ReasonMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, err := d.Counters()
			if err != nil {
				t.Fatal(err)
			}
			if got := run(t, d.Program(), tt.pkt, tt.ifindex); got != tt.want {
				t.Fatalf("verdict = %#x, want %#x", got, tt.want)
			}
			after, err := d.Counters()
			if err != nil {
				t.Fatal(err)
			}
			if after[tt.reason] != before[tt.reason]+1 {
				t.Fatalf("counter %v: %d -> %d, want +1 (all: %v)", tt.reason, before[tt.reason], after[tt.reason], after)
			}
		})
	}
}

func TestUnconfiguredDatapathFailsClosed(t *testing.T) {
	d := openTestDatapath(t)
	pkt := frame{src: peer4, dst: local4, proto: ProtoTCP, sport: 40000, dport: admPort, tcpFlags: tcpSYN}.bytes()
	if got := run(t, d.Program(), pkt, ifIn); got != retDrop {
		t.Fatalf("verdict = %#x, want drop before any configuration", got)
	}
}

func TestExpiredAdmissionDrops(t *testing.T) {
	d := openTestDatapath(t)
	if err := d.SetConfig(ModeEnforce, admPort); err != nil {
		t.Fatal(err)
	}
	if err := d.PutPeer(PeerEntry{Ifindex: ifIn, Addr: peer4, Identity: identityA, Expires: time.Now().Add(-time.Second)}); !errors.Is(err, ErrExpired) {
		t.Fatalf("PutPeer(past) = %v, want ErrExpired", err)
	}
	if err := d.SyncPolicy(map[PolicyKey]bool{{identityA, 8080, ProtoTCP, Inbound}: true}); err != nil {
		t.Fatal(err)
	}
	// A margin a loaded CI machine cannot stall through between PutPeer and
	// the first run.
	expires := time.Now().Add(time.Second)
	if err := d.PutPeer(PeerEntry{Ifindex: ifIn, Addr: peer4, Identity: identityA, Expires: expires}); err != nil {
		t.Fatal(err)
	}
	// An established flow (ACK only) is cut once the admission expires.
	pkt := frame{src: peer4, dst: local4, proto: ProtoTCP, sport: 40000, dport: 8080, tcpFlags: tcpACK}.bytes()
	if got := run(t, d.Program(), pkt, ifIn); got != retPass {
		t.Fatalf("before expiry: verdict = %#x, want pass", got)
	}
	time.Sleep(time.Until(expires) + 100*time.Millisecond)
	if got := run(t, d.Program(), pkt, ifIn); got != retDrop {
		t.Fatalf("after expiry: verdict = %#x, want drop", got)
	}
	c, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c[ReasonExpired] != 1 {
		t.Fatalf("expired counter = %d, want 1", c[ReasonExpired])
	}
	// Revocation: deleting the entry drops the next packet.
	if err := d.PutPeer(PeerEntry{Ifindex: ifIn, Addr: peer4, Identity: identityA, Expires: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if got := run(t, d.Program(), pkt, ifIn); got != retPass {
		t.Fatalf("re-admitted: verdict = %#x, want pass", got)
	}
	if err := d.DeletePeer(ifIn, peer4); err != nil {
		t.Fatal(err)
	}
	if got := run(t, d.Program(), pkt, ifIn); got != retDrop {
		t.Fatalf("revoked: verdict = %#x, want drop", got)
	}
}

func TestAuditModeReportsWouldBeDrops(t *testing.T) {
	d := openTestDatapath(t)
	if err := d.SetConfig(ModeAudit, admPort); err != nil {
		t.Fatal(err)
	}
	fr, err := d.Flows()
	if err != nil {
		t.Fatal(err)
	}
	defer fr.Close()
	pkt := frame{src: peer4, dst: local4, proto: ProtoTCP, sport: 40001, dport: 8080, tcpFlags: tcpSYN}.bytes()
	if got := run(t, d.Program(), pkt, ifIn); got != retPass {
		t.Fatalf("audit verdict = %#x, want pass", got)
	}
	fr.SetDeadline(time.Now().Add(time.Second))
	ev, err := fr.Read()
	if err != nil {
		t.Fatalf("read flow event: %v", err)
	}
	want := FlowEvent{Ifindex: ifIn, Src: peer4, Dst: local4, SrcPort: 40001, DstPort: 8080, Proto: ProtoTCP,
		Verdict: VerdictAudit, Reason: ReasonNotAdmitted, TCPFlags: tcpSYN}
	got := ev
	got.Time = time.Time{}
	if got != want {
		t.Fatalf("event = %+v\nwant    %+v", got, want)
	}
	if d := time.Since(ev.Time); d < 0 || d > 5*time.Second {
		t.Fatalf("event time off by %v", d)
	}
}

func TestFlowEventsForAllowedFlows(t *testing.T) {
	d := openTestDatapath(t)
	if err := d.SetConfig(ModeEnforce, admPort); err != nil {
		t.Fatal(err)
	}
	if err := d.PutPeer(PeerEntry{Ifindex: ifIn, Addr: peer4, Identity: identityA, Expires: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := d.SyncPolicy(map[PolicyKey]bool{{identityA, 8080, ProtoTCP, Inbound}: true, {identityA, 53, ProtoUDP, Inbound}: true}); err != nil {
		t.Fatal(err)
	}
	fr, err := d.Flows()
	if err != nil {
		t.Fatal(err)
	}
	defer fr.Close()
	syn := frame{src: peer4, dst: local4, proto: ProtoTCP, sport: 40000, dport: 8080, tcpFlags: tcpSYN}.bytes()
	ack := frame{src: peer4, dst: local4, proto: ProtoTCP, sport: 40000, dport: 8080, tcpFlags: tcpACK}.bytes()
	udp := frame{src: peer4, dst: local4, proto: ProtoUDP, sport: 40000, dport: 53}.bytes()
	for _, p := range [][]byte{syn, ack, ack, udp, udp, udp} {
		if got := run(t, d.Program(), p, ifIn); got != retPass {
			t.Fatalf("verdict = %#x, want pass", got)
		}
	}
	var got []FlowEvent
	for {
		fr.SetDeadline(time.Now().Add(200 * time.Millisecond))
		ev, err := fr.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ev)
	}
	// One event for the SYN, one for the UDP flow (rate limited per second).
	if len(got) != 2 || got[0].Proto != ProtoTCP || got[1].Proto != ProtoUDP || got[0].Verdict != VerdictPass || got[0].Identity != identityA {
		t.Fatalf("events = %+v, want one TCP SYN and one UDP pass", got)
	}
}

func TestSyncPolicyReplacesEntries(t *testing.T) {
	d := openTestDatapath(t)
	first := map[PolicyKey]bool{{1, 80, ProtoTCP, Inbound}: true, {1, 443, ProtoTCP, Inbound}: true}
	second := map[PolicyKey]bool{{1, 443, ProtoTCP, Inbound}: true, {2, 53, ProtoUDP, Reply}: true}
	for _, want := range []map[PolicyKey]bool{first, second, {}} {
		if err := d.SyncPolicy(want); err != nil {
			t.Fatal(err)
		}
		got, err := d.PolicyEntries()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("policy map = %v, want %v", got, want)
		}
		for k := range want {
			if !got[k] {
				t.Fatalf("policy map = %v, want %v", got, want)
			}
		}
	}
}

func TestAdmissionIfindexRecorded(t *testing.T) {
	d := openTestDatapath(t)
	if err := d.SetConfig(ModeEnforce, admPort); err != nil {
		t.Fatal(err)
	}
	src := netip.AddrPortFrom(peer6, 41000)
	if _, err := d.AdmissionIfindex(src); !errors.Is(err, ErrUnknownIngress) {
		t.Fatalf("before any packet: err = %v, want ErrUnknownIngress", err)
	}
	pkt := frame{src: peer6, dst: local6, proto: ProtoTCP, sport: 41000, dport: admPort, tcpFlags: tcpSYN}.bytes()
	if got := run(t, d.Program(), pkt, ifOther); got != retPass {
		t.Fatalf("verdict = %#x, want pass", got)
	}
	got, err := d.AdmissionIfindex(src)
	if err != nil || got != ifOther {
		t.Fatalf("AdmissionIfindex = %d, %v; want %d", got, err, ifOther)
	}
}

func BenchmarkPerPacket(b *testing.B) {
	testenv.RequireRoot(b)
	d, err := OpenDatapath(DatapathOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	if err := d.SetConfig(ModeEnforce, admPort); err != nil {
		b.Fatal(err)
	}
	// Benchmark cannot pass a context, so the skb has ingress_ifindex 0:
	// write that key directly (PutPeer refuses it).
	k := palisadePeerKey{Ifindex: 0, Addr: addr16(peer4)}
	v := palisadePeerValue{Identity: identityA, ExpiresNs: bootNow() + uint64(time.Hour)}
	if err := d.objs.Peers.Put(&k, &v); err != nil {
		b.Fatal(err)
	}
	if err := d.SyncPolicy(map[PolicyKey]bool{{identityA, 8080, ProtoTCP, Inbound}: true}); err != nil {
		b.Fatal(err)
	}
	// An established-flow packet: the common case on the fast path.
	pkt := frame{src: peer4, dst: local4, proto: ProtoTCP, sport: 40000, dport: 8080, tcpFlags: tcpACK}.bytes()
	const repeat = 1_000_000
	measure := func(p *ebpf.Program, want uint32) time.Duration {
		ret, per, err := p.Benchmark(pkt, repeat, nil)
		if err != nil {
			b.Fatal(err)
		}
		if ret != want {
			b.Fatalf("ret = %#x, want %#x", ret, want)
		}
		return per
	}
	// Interleave so host speed swings hit both equally.
	var enf, empty time.Duration
	for b.Loop() {
		empty += measure(d.EmptyProgram(), retPass)
		enf += measure(d.Program(), retPass)
	}
	n := time.Duration(b.N)
	b.ReportMetric(float64((enf / n).Nanoseconds()), "ns/pkt-enforcer")
	b.ReportMetric(float64((empty / n).Nanoseconds()), "ns/pkt-empty")
	b.ReportMetric(float64(((enf - empty) / n).Nanoseconds()), "ns/pkt-added")
}

func TestEgressRequestsOnDemandAdmission(t *testing.T) {
	d := openTestDatapath(t)
	if err := d.SetConfig(ModeEnforce, admPort); err != nil {
		t.Fatal(err)
	}
	rr, err := d.AdmitRequests()
	if err != nil {
		t.Fatal(err)
	}
	defer rr.Close()
	// BPF_PROG_TEST_RUN runs the skb on loopback: ifindex 1.
	admitted := netip.MustParseAddr("10.99.0.20")
	if err := d.PutPeer(PeerEntry{Ifindex: 1, Addr: admitted, Identity: identityA, Expires: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	unknown6 := netip.MustParseAddr("fd99::30")
	tests := []struct {
		name string
		pkt  []byte
		want []AdmitRequest
	}{
		{"SYN to a stranger", frame{src: local4, dst: peer4, proto: ProtoTCP, sport: 40000, dport: 8080, tcpFlags: tcpSYN}.bytes(),
			[]AdmitRequest{{Ifindex: 1, Addr: peer4, DstPort: 8080}}},
		{"retransmitted SYN within the rate limit", frame{src: local4, dst: peer4, proto: ProtoTCP, sport: 40000, dport: 8080, tcpFlags: tcpSYN}.bytes(), nil},
		{"SYN to an admitted peer", frame{src: local4, dst: admitted, proto: ProtoTCP, sport: 40000, dport: 8080, tcpFlags: tcpSYN}.bytes(), nil},
		{"ACK to a stranger", frame{src: local4, dst: other4, proto: ProtoTCP, sport: 40000, dport: 8080, tcpFlags: tcpACK}.bytes(), nil},
		{"SYN to the admission port", frame{src: local4, dst: other4, proto: ProtoTCP, sport: admPort, dport: admPort, tcpFlags: tcpSYN}.bytes(), nil},
		{"UDP to a stranger", frame{src: local4, dst: other4, proto: ProtoUDP, sport: 40000, dport: 53}.bytes(), nil},
		{"IPv6 SYN to a stranger", frame{src: local6, dst: unknown6, proto: ProtoTCP, sport: 40000, dport: 443, tcpFlags: tcpSYN}.bytes(),
			[]AdmitRequest{{Ifindex: 1, Addr: unknown6, DstPort: 443}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ret, err := d.EgressProgram().Run(&ebpf.RunOptions{Data: tt.pkt})
			if err != nil {
				t.Fatal(err)
			}
			if ret != retPass {
				t.Fatalf("egress verdict = %#x, want pass (egress never drops)", ret)
			}
			var got []AdmitRequest
			for {
				rr.SetDeadline(time.Now().Add(100 * time.Millisecond))
				q, err := rr.Read()
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, q)
			}
			if len(got) != len(tt.want) || (len(got) == 1 && got[0] != tt.want[0]) {
				t.Fatalf("requests = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestFlowEventsRateLimited(t *testing.T) {
	d := openTestDatapath(t)
	if err := d.SetConfig(ModeEnforce, admPort); err != nil {
		t.Fatal(err)
	}
	fr, err := d.Flows()
	if err != nil {
		t.Fatal(err)
	}
	defer fr.Close()
	// A spoofed-source flood: every packet from a new address.
	const flood = 12000
	start := time.Now()
	for i := 0; i < flood; i++ {
		src := netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)})
		pkt := frame{src: src, dst: local4, proto: ProtoUDP, sport: 1, dport: 53}.bytes()
		if got := run(t, d.Program(), pkt, ifIn); got != retDrop {
			t.Fatalf("verdict = %#x, want drop", got)
		}
	}
	// The flood's last source again, within its dedup second however long
	// the flood took on a loaded machine: deduplicated.
	last := flood - 1
	same := frame{src: netip.AddrFrom4([4]byte{10, 200, byte(last >> 8), byte(last)}), dst: local4, proto: ProtoUDP, sport: 2, dport: 53}.bytes()
	run(t, d.Program(), same, ifIn)
	elapsed := time.Since(start)
	events := 0
	for {
		fr.SetDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := fr.Read(); err != nil {
			break
		}
		events++
	}
	c, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	// 5000 per CPU per budget window; the test may have run on every CPU.
	// A CPU's first window opens at its first packet (fresh maps), so a
	// flood of e seconds spans at most floor(e)+1 windows.
	maxEvents := 5000 * runtime.NumCPU() * (int(elapsed/time.Second) + 1)
	if events == 0 || events > maxEvents || events > flood {
		t.Fatalf("%d events for a %d-packet flood, want 1..%d", events, flood, maxEvents)
	}
	if int(c[CounterSuppressed])+events != flood {
		t.Fatalf("suppressed %d + written %d != %d distinct sources", c[CounterSuppressed], events, flood)
	}
	if c[ReasonNotAdmitted] != flood+1 {
		t.Fatalf("not-admitted counter = %d, want %d", c[ReasonNotAdmitted], flood+1)
	}
}
