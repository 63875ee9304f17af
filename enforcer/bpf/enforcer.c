// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Palisade kernel enforcer: tc/TCX ingress verdicts keyed by admitted
// identity. Kept deliberately small: every branch is covered by prog.Run
// tests in enforcer/datapath_test.go.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual BSD/GPL";

// Verdicts reported in flow events.
enum verdict {
	VERDICT_PASS = 1,
	VERDICT_DROP = 2,
	VERDICT_AUDIT = 3, // would have been dropped; audit mode let it through
};

// Reasons, also the index of the per-CPU counters.
enum reason {
	REASON_POLICY = 1,        // pass: policy entry for (identity, port, proto, dir)
	REASON_ADMISSION = 2,     // pass: TCP to the admission port
	REASON_LINK_CONTROL = 3,  // pass: ARP, IPv6 neighbour discovery, MLD
	REASON_PMTU = 4,          // pass: ICMP "fragmentation needed" / "packet too big"
	REASON_NOT_ADMITTED = 5,  // drop: no admission for (ifindex, source)
	REASON_EXPIRED = 6,       // drop: admission expired
	REASON_NO_POLICY = 7,     // drop: admitted, but the policy does not allow it
	REASON_FRAGMENT = 8,      // drop: non-first fragment
	REASON_MALFORMED = 9,     // drop: truncated or unparsable header
	REASON_UNSUPPORTED = 10,  // drop: neither ARP, IPv4 nor IPv6
	COUNTER_SUPPRESSED = 15,  // flow events not written (rate limits)
	REASON_MAX = 16,
};

enum mode {
	MODE_ENFORCE = 0, // zero value: an unconfigured datapath drops
	MODE_AUDIT = 1,
};

enum direction {
	DIR_INBOUND = 0, // peer opens a flow to a local port
	DIR_REPLY = 1,   // peer answers from a port the local node may reach
};

struct config {
	__u32 mode;
	__u16 admission_port; // host order; 0 = none
	__u16 _pad;
};

// IPv4 sources are stored as IPv4-mapped IPv6 addresses.
struct peer_key {
	__u32 ifindex;
	__u8 addr[16];
};

struct peer_value {
	__u32 identity;
	__u32 _pad;
	__u64 expires_ns; // CLOCK_BOOTTIME
};

struct policy_key {
	__u32 identity;
	__u16 port; // host order; 0 for ICMP
	__u8 proto;
	__u8 dir;
};

struct seen_key {
	__u8 addr[16];
	__u16 port; // host order
	__u16 _pad;
};

struct dedup_key {
	struct peer_key peer;
	__u16 port;
	__u8 proto;
	__u8 tag; // verdict << 4 | (reason of a drop, or direction of a pass)
};

struct event_budget {
	__u64 window_ns;
	__u64 n;
};

struct flow_event {
	__u64 ts_ns; // CLOCK_BOOTTIME
	__u32 ifindex;
	__u32 identity;
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 verdict;
	__u8 reason;
	__u8 tcp_flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct peer_key);
	__type(value, struct peer_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy SEC(".maps");

// Which interface an admission connection arrived on, keyed by the
// remote (address, port): the agent reads it to key the peer entry.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct seen_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} admission_seen SEC(".maps");

// Flow events are rate limited twice: once a second per (source, port,
// protocol, outcome), and a per-CPU budget per second, so a flood (spoofed
// sources included) cannot flood the agent or the flow log.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event_budget);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} event_budget SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct dedup_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flow_dedup SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REASON_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");


// On-demand admission: the egress program asks the agent to admit this
// node to a destination it sends a TCP SYN to without holding an entry for
// it; the SYN's retransmission then finds the admission done.
struct admit_request {
	__u32 ifindex;
	__u8 addr[16];
	__u16 dport;
	__u16 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} admit_requests SEC(".maps");

// Last request per destination, to ask at most twice a second.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct peer_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} admit_pending SEC(".maps");

// Emits BTF for the event types so bpf2go generates their Go structs.
const struct flow_event *unused_flow_event __attribute__((unused));
const struct admit_request *unused_admit_request __attribute__((unused));

#define ETH_HLEN_ 14
#define PASS TC_ACT_UNSPEC // TCX_NEXT: let later programs see it
#define DROP TC_ACT_SHOT

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_ACK 0x10

#define DEDUP_NS 1000000000ULL
#define EVENTS_PER_CPU_SECOND 5000

struct pkt {
	struct peer_key src;
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags;
};

static __always_inline void count(__u32 reason)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &reason);
	if (c)
		*c += 1;
}

static __always_inline void emit(struct pkt *p, __u32 identity, __u8 verdict, __u8 reason,
				 __u16 port, __u8 tag)
{
	__u64 now = bpf_ktime_get_boot_ns();
	struct dedup_key dk = {};
	dk.peer = p->src;
	dk.port = port;
	dk.proto = p->proto;
	dk.tag = tag;
	__u64 *last = bpf_map_lookup_elem(&flow_dedup, &dk);
	if (last && now - *last < DEDUP_NS)
		return;
	bpf_map_update_elem(&flow_dedup, &dk, &now, BPF_ANY);

	__u32 zero = 0;
	struct event_budget *b = bpf_map_lookup_elem(&event_budget, &zero);
	if (!b)
		return;
	if (now - b->window_ns >= DEDUP_NS) {
		b->window_ns = now;
		b->n = 0;
	}
	if (b->n >= EVENTS_PER_CPU_SECOND) {
		count(COUNTER_SUPPRESSED);
		return;
	}
	b->n++;

	struct flow_event *e = bpf_ringbuf_reserve(&flows, sizeof(*e), 0);
	if (!e) {
		count(COUNTER_SUPPRESSED);
		return;
	}
	e->ts_ns = now;
	e->ifindex = p->src.ifindex;
	e->identity = identity;
	__builtin_memcpy(e->saddr, p->src.addr, 16);
	__builtin_memcpy(e->daddr, p->daddr, 16);
	e->sport = p->sport;
	e->dport = p->dport;
	e->proto = p->proto;
	e->verdict = verdict;
	e->reason = reason;
	e->tcp_flags = p->tcp_flags;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline int deny(struct pkt *p, struct config *cfg, __u32 identity, __u8 reason)
{
	count(reason);
	if (cfg && cfg->mode == MODE_AUDIT) {
		emit(p, identity, VERDICT_AUDIT, reason, p->dport, VERDICT_AUDIT << 4 | reason);
		return PASS;
	}
	emit(p, identity, VERDICT_DROP, reason, p->dport, VERDICT_DROP << 4 | reason);
	return DROP;
}

static __always_inline void map_v4(__u8 *dst, __u32 addr)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &addr, 4);
}

// load copies n bytes at off into dst: straight from the linear packet
// data when it holds them (the common case, no helper call), otherwise
// through bpf_skb_load_bytes (paged data). off must be bounded.
#define load(skb, off, dst, n)                                                \
	({                                                                    \
		void *_d = (void *)(long)(skb)->data;                         \
		void *_e = (void *)(long)(skb)->data_end;                     \
		int _r = 0;                                                   \
		if (_d + (off) + (n) <= _e)                                   \
			__builtin_memcpy((dst), _d + (off), (n));             \
		else                                                          \
			_r = bpf_skb_load_bytes((skb), (off), (dst), (n));    \
		_r;                                                           \
	})

// Loads the L4 ports and TCP flags at off. Returns 0 or -1 if truncated.
static __always_inline int load_l4(struct __sk_buff *skb, __u32 off, struct pkt *p)
{
	if (p->proto == IPPROTO_TCP) {
		__u8 h[14];
		if (load(skb, off, h, sizeof(h)) < 0)
			return -1;
		p->sport = (__u16)h[0] << 8 | h[1];
		p->dport = (__u16)h[2] << 8 | h[3];
		p->tcp_flags = h[13];
	} else if (p->proto == IPPROTO_UDP) {
		__u8 h[4];
		if (bpf_skb_load_bytes(skb, off, h, sizeof(h)) < 0)
			return -1;
		p->sport = (__u16)h[0] << 8 | h[1];
		p->dport = (__u16)h[2] << 8 | h[3];
	} else if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6) {
		__u8 h[2];
		if (bpf_skb_load_bytes(skb, off, h, sizeof(h)) < 0)
			return -1;
		// type/code in sport for the event and the pass-through checks.
		p->sport = (__u16)h[0] << 8 | h[1];
	}
	return 0;
}

SEC("tc")
int palisade_ingress(struct __sk_buff *skb)
{
	struct pkt p = {};
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config_map, &zero);
	__u8 ttl = 0;

	p.src.ifindex = skb->ingress_ifindex;

	if (skb->protocol == bpf_htons(ETH_P_ARP)) {
		count(REASON_LINK_CONTROL);
		return PASS;
	}
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 h[20];
		if (load(skb, ETH_HLEN_, h, sizeof(h)) < 0)
			return deny(&p, cfg, 0, REASON_MALFORMED);
		__u32 ihl = (h[0] & 0x0f) * 4;
		if ((h[0] >> 4) != 4 || ihl < 20)
			return deny(&p, cfg, 0, REASON_MALFORMED);
		__u32 s, d;
		__builtin_memcpy(&s, &h[12], 4);
		__builtin_memcpy(&d, &h[16], 4);
		map_v4(p.src.addr, s);
		map_v4(p.daddr, d);
		p.proto = h[9];
		if ((((__u16)h[6] << 8 | h[7]) & 0x1fff) != 0)
			return deny(&p, cfg, 0, REASON_FRAGMENT);
		if (load_l4(skb, ETH_HLEN_ + ihl, &p) < 0)
			return deny(&p, cfg, 0, REASON_MALFORMED);
		// Fragmentation needed: PMTU discovery must survive.
		if (p.proto == IPPROTO_ICMP && p.sport == ((3 << 8) | 4)) {
			count(REASON_PMTU);
			return PASS;
		}
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		__u8 h[40];
		if (load(skb, ETH_HLEN_, h, sizeof(h)) < 0)
			return deny(&p, cfg, 0, REASON_MALFORMED);
		if ((h[0] >> 4) != 6)
			return deny(&p, cfg, 0, REASON_MALFORMED);
		__builtin_memcpy(p.src.addr, &h[8], 16);
		__builtin_memcpy(p.daddr, &h[24], 16);
		ttl = h[7];
		__u8 next = h[6];
		__u32 off = ETH_HLEN_ + 40;
		int i;
#pragma unroll
		for (i = 0; i < 6; i++) {
			__u8 x[4];
			if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING &&
			    next != IPPROTO_DSTOPTS && next != IPPROTO_FRAGMENT &&
			    next != IPPROTO_AH)
				break;
			if (bpf_skb_load_bytes(skb, off, x, sizeof(x)) < 0)
				return deny(&p, cfg, 0, REASON_MALFORMED);
			if (next == IPPROTO_FRAGMENT) {
				if ((((__u16)x[2] << 8 | x[3]) & 0xfff8) != 0) {
					p.proto = IPPROTO_FRAGMENT;
					return deny(&p, cfg, 0, REASON_FRAGMENT);
				}
				off += 8;
			} else if (next == IPPROTO_AH) {
				off += ((__u32)x[1] + 2) * 4;
			} else {
				off += ((__u32)x[1] + 1) * 8;
			}
			next = x[0];
		}
		if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING ||
		    next == IPPROTO_DSTOPTS || next == IPPROTO_FRAGMENT ||
		    next == IPPROTO_AH) {
			p.proto = next;
			return deny(&p, cfg, 0, REASON_MALFORMED); // chain too long
		}
		p.proto = next;
		if (load_l4(skb, off, &p) < 0)
			return deny(&p, cfg, 0, REASON_MALFORMED);
		if (p.proto == IPPROTO_ICMPV6) {
			__u8 type = p.sport >> 8;
			// Neighbour discovery (hop limit 255: on-link only) and MLD.
			if ((type >= 133 && type <= 137 && ttl == 255) ||
			    (type >= 130 && type <= 132) || type == 143) {
				count(REASON_LINK_CONTROL);
				return PASS;
			}
			if (type == 2) { // packet too big
				count(REASON_PMTU);
				return PASS;
			}
		}
	} else {
		return deny(&p, cfg, 0, REASON_UNSUPPORTED);
	}

	if (p.proto == IPPROTO_TCP && cfg && cfg->admission_port != 0 &&
	    p.dport == cfg->admission_port) {
		struct seen_key sk = {};
		__builtin_memcpy(sk.addr, p.src.addr, 16);
		sk.port = p.sport;
		bpf_map_update_elem(&admission_seen, &sk, &p.src.ifindex, BPF_ANY);
		count(REASON_ADMISSION);
		return PASS;
	}

	struct peer_value *peer = bpf_map_lookup_elem(&peers, &p.src);
	if (!peer)
		return deny(&p, cfg, 0, REASON_NOT_ADMITTED);
	__u32 identity = peer->identity;
	__u64 now = bpf_ktime_get_boot_ns();
	if (now >= peer->expires_ns)
		return deny(&p, cfg, identity, REASON_EXPIRED);

	int icmp = p.proto == IPPROTO_ICMP || p.proto == IPPROTO_ICMPV6;
	int syn_only = p.proto == IPPROTO_TCP &&
		       (p.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
	struct policy_key pk = {
		.identity = identity,
		.port = icmp ? 0 : p.dport,
		.proto = p.proto,
		.dir = DIR_INBOUND,
	};
	__u8 dir = DIR_INBOUND;
	if (!bpf_map_lookup_elem(&policy, &pk)) {
		// A reply from a service the local node may reach; a peer cannot
		// open a TCP connection this way (no bare SYN).
		if (syn_only)
			return deny(&p, cfg, identity, REASON_NO_POLICY);
		pk.port = icmp ? 0 : p.sport;
		pk.dir = DIR_REPLY;
		if (!bpf_map_lookup_elem(&policy, &pk))
			return deny(&p, cfg, identity, REASON_NO_POLICY);
		dir = DIR_REPLY;
	}
	count(REASON_POLICY);

	// Flow log: TCP connection starts and other flows (both at most once
	// a second per source and port), not every packet of a TCP flow.
	if (p.proto != IPPROTO_TCP || syn_only)
		emit(&p, identity, VERDICT_PASS, REASON_POLICY, pk.port, VERDICT_PASS << 4 | dir);
	return PASS;
}

#define ADMIT_REQUEST_NS 500000000ULL

// Egress: never drops; requests admission for a bare TCP SYN towards a
// destination without a peer entry.
SEC("tc")
int palisade_egress(struct __sk_buff *skb)
{
	struct peer_key dst = {};
	__u32 off;
	__u8 proto;

	dst.ifindex = skb->ifindex;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 h[20];
		if (bpf_skb_load_bytes(skb, ETH_HLEN_, h, sizeof(h)) < 0)
			return PASS;
		__u32 d;
		__builtin_memcpy(&d, &h[16], 4);
		map_v4(dst.addr, d);
		proto = h[9];
		off = ETH_HLEN_ + (h[0] & 0x0f) * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		__u8 h[40];
		if (bpf_skb_load_bytes(skb, ETH_HLEN_, h, sizeof(h)) < 0)
			return PASS;
		__builtin_memcpy(dst.addr, &h[24], 16);
		proto = h[6]; // a SYN with extension headers is not worth a request
		off = ETH_HLEN_ + 40;
	} else {
		return PASS;
	}
	if (proto != IPPROTO_TCP)
		return PASS;
	__u8 t[14];
	if (bpf_skb_load_bytes(skb, off, t, sizeof(t)) < 0)
		return PASS;
	if ((t[13] & (TCP_SYN | TCP_ACK)) != TCP_SYN)
		return PASS;
	__u16 dport = (__u16)t[2] << 8 | t[3];
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config_map, &zero);
	if (!cfg || dport == cfg->admission_port)
		return PASS;
	__u64 now = bpf_ktime_get_boot_ns();
	struct peer_value *peer = bpf_map_lookup_elem(&peers, &dst);
	if (peer && now < peer->expires_ns)
		return PASS;
	__u64 *last = bpf_map_lookup_elem(&admit_pending, &dst);
	if (last && now - *last < ADMIT_REQUEST_NS)
		return PASS;
	bpf_map_update_elem(&admit_pending, &dst, &now, BPF_ANY);
	struct admit_request *r = bpf_ringbuf_reserve(&admit_requests, sizeof(*r), 0);
	if (!r)
		return PASS;
	r->ifindex = dst.ifindex;
	__builtin_memcpy(r->addr, dst.addr, 16);
	r->dport = dport;
	r->_pad = 0;
	bpf_ringbuf_submit(r, 0);
	return PASS;
}

// Baseline for benchmarks: the cost of running any program at all.
SEC("tc")
int palisade_empty(struct __sk_buff *skb)
{
	return PASS;
}
