package enforcer

import (
	"encoding/binary"
	"net/netip"
)

// Hand-built frames for prog.Run tests: Ethernet + IPv4/IPv6 + L4.

type frame struct {
	src, dst     netip.Addr
	proto        uint8
	sport, dport uint16
	tcpFlags     uint8
	icmpType     uint8
	icmpCode     uint8
	fragOff      uint16 // IPv4 offset in 8-byte units / IPv6 fragment offset
	v6ext        []uint8
	hopLimit     uint8
	ethType      uint16 // overrides the computed EtherType
	truncate     int    // bytes to cut from the end
	ipv4Options  int    // 32-bit words of IPv4 options (NOPs)
}

const (
	tcpSYN = 0x02
	tcpACK = 0x10
)

func (f frame) bytes() []byte {
	l4 := f.l4()
	var b []byte
	eth := make([]byte, 14)
	copy(eth[0:6], []byte{2, 0, 0, 0, 0, 1})
	copy(eth[6:12], []byte{2, 0, 0, 0, 0, 2})
	et := uint16(0x0800)
	if f.src.Is6() {
		et = 0x86dd
	}
	if f.ethType != 0 {
		et = f.ethType
	}
	binary.BigEndian.PutUint16(eth[12:], et)
	b = append(b, eth...)
	if f.src.Is4() {
		ip := make([]byte, 20+4*f.ipv4Options)
		ip[0] = 0x40 | byte(5+f.ipv4Options)
		for i := 20; i < len(ip); i++ {
			ip[i] = 1 // NOP
		}
		binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)+len(l4)))
		binary.BigEndian.PutUint16(ip[6:], f.fragOff&0x1fff)
		ip[8] = 64
		ip[9] = f.proto
		s, d := f.src.As4(), f.dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		b = append(b, ip...)
	} else {
		var ext []byte
		next := f.proto
		// Build the extension chain back to front.
		for i := len(f.v6ext) - 1; i >= 0; i-- {
			h := make([]byte, 8)
			h[0] = next
			if f.v6ext[i] == 44 {
				binary.BigEndian.PutUint16(h[2:], f.fragOff<<3)
			}
			ext = append(h, ext...)
			next = f.v6ext[i]
		}
		ip := make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(len(ext)+len(l4)))
		ip[6] = next
		ip[7] = 64
		if f.hopLimit != 0 {
			ip[7] = f.hopLimit
		}
		s, d := f.src.As16(), f.dst.As16()
		copy(ip[8:], s[:])
		copy(ip[24:], d[:])
		b = append(b, ip...)
		b = append(b, ext...)
	}
	b = append(b, l4...)
	for len(b) < 60 { // minimum Ethernet frame
		b = append(b, 0)
	}
	return b[:len(b)-f.truncate]
}

func (f frame) l4() []byte {
	switch f.proto {
	case ProtoTCP:
		h := make([]byte, 20)
		binary.BigEndian.PutUint16(h[0:], f.sport)
		binary.BigEndian.PutUint16(h[2:], f.dport)
		h[12] = 5 << 4
		h[13] = f.tcpFlags
		return h
	case ProtoUDP:
		h := make([]byte, 8)
		binary.BigEndian.PutUint16(h[0:], f.sport)
		binary.BigEndian.PutUint16(h[2:], f.dport)
		binary.BigEndian.PutUint16(h[4:], 8)
		return h
	case ProtoICMP, ProtoICMPv6:
		return []byte{f.icmpType, f.icmpCode, 0, 0, 0, 0, 0, 0}
	}
	return make([]byte, 8)
}

func arpFrame() []byte {
	b := make([]byte, 60)
	copy(b[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	binary.BigEndian.PutUint16(b[12:], 0x0806)
	return b
}

// skbCtx is the head of struct __sk_buff up to ifindex; BPF_PROG_TEST_RUN
// copies ingress_ifindex into the test skb.
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto, Priority uint32
	IngressIfindex, Ifindex                                                               uint32
}
