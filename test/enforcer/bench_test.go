//go:build integration

package enforcer

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/palisade-id/palisade/enforcer"
	"github.com/palisade-id/palisade/test/netns"
	"github.com/palisade-id/palisade/test/testca"
	"github.com/palisade-id/palisade/test/testenv"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Run with: go test -tags integration -run '^$' -bench . -benchtime 1x ./test/enforcer/
// Host speed swings between runs, so each comparison is interleaved in one
// run and reported as a ratio (enforcer / no program).

type benchNet struct {
	srv, cli *netns.NS
	ifindex  int
	dp       *enforcer.Datapath
}

func newBenchNet(b *testing.B) *benchNet {
	b.Helper()
	testenv.RequireRoot(b)
	testenv.Require(b, "ip", "iperf3")
	n := &benchNet{srv: netns.New(b, "bsrv"), cli: netns.New(b, "bcli")}
	netns.Link(b, n.srv, "eth0", []string{"10.79.0.1/24"}, n.cli, "eth0", []string{"10.79.0.2/24"})
	n.ifindex = n.srv.Ifindex(b, "eth0")
	d, err := enforcer.OpenDatapath(enforcer.DatapathOptions{PinDir: filepath.Join(netns.BPFFS(b), "p")})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	n.dp = d
	if err := d.SetConfig(enforcer.ModeEnforce, 7443); err != nil {
		b.Fatal(err)
	}
	if err := d.PutPeer(enforcer.PeerEntry{Ifindex: n.ifindex, Addr: netip.MustParseAddr("10.79.0.2"), Identity: 9, Expires: time.Now().Add(time.Hour)}); err != nil {
		b.Fatal(err)
	}
	if err := d.SyncPolicy(map[enforcer.PolicyKey]bool{
		{Identity: 9, Port: 5201, Proto: enforcer.ProtoTCP}: true,
		{Identity: 9, Port: 8080, Proto: enforcer.ProtoTCP}: true,
	}); err != nil {
		b.Fatal(err)
	}
	return n
}

func (n *benchNet) attach(b *testing.B, on bool) {
	b.Helper()
	err := n.srv.Do(func() error {
		if on {
			_, err := n.dp.Attach(n.ifindex, enforcer.AttachTCX)
			return err
		}
		return n.dp.Detach(n.ifindex)
	})
	if err != nil {
		b.Fatal(err)
	}
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func BenchmarkEnforcer(b *testing.B) {
	n := newBenchNet(b)
	b.Run("tcp_throughput", func(b *testing.B) { n.throughput(b) })
	b.Run("connection_rate", func(b *testing.B) { n.connRate(b) })
}

// throughput: iperf3, 6 interleaved rounds of 2 s each with no program,
// the empty program and the enforcer; the median of per-round ratios is
// reported (host speed drifts between rounds). Per-run program time comes
// from kernel BPF stats under this traffic (one run per GSO/GRO skb).
func (n *benchNet) throughput(b *testing.B) {
	srv := exec.Command("ip", "netns", "exec", n.srv.Name, "iperf3", "-s", "-B", "10.79.0.1")
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = srv.Process.Signal(syscall.SIGKILL); _ = srv.Wait() })
	stats, err := enforcer.EnableRunStats()
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()
	iperf := func() float64 {
		for try := 0; ; try++ {
			out, err := exec.Command("ip", "netns", "exec", n.cli.Name, "iperf3", "-c", "10.79.0.1", "-t", "2", "-J").Output()
			if err != nil {
				if try < 20 {
					time.Sleep(100 * time.Millisecond) // server still starting
					continue
				}
				b.Fatalf("iperf3: %v\n%s", err, out)
			}
			var r struct {
				End struct {
					SumReceived struct {
						BitsPerSecond float64 `json:"bits_per_second"`
					} `json:"sum_received"`
				} `json:"end"`
			}
			if err := json.Unmarshal(out, &r); err != nil {
				b.Fatal(err)
			}
			return r.End.SumReceived.BitsPerSecond
		}
	}
	var enfRatio, emptyRatio []float64
	var enfSum, noneSum float64
	var enfStats, emptyStats enforcer.RunStats
	none := func() float64 { return iperf() }
	empty := func() float64 {
		var bl io.Closer
		if err := n.srv.Do(func() (err error) { bl, err = n.dp.AttachBaseline(n.ifindex); return err }); err != nil {
			b.Fatal(err)
		}
		defer bl.Close()
		s0, _ := n.dp.BaselineRunStats()
		v := iperf()
		s1, _ := n.dp.BaselineRunStats()
		emptyStats = addStats(emptyStats, s1.Sub(s0))
		return v
	}
	enforced := func() float64 {
		n.attach(b, true)
		defer n.attach(b, false)
		e0, _ := n.dp.RunStats()
		v := iperf()
		e1, _ := n.dp.RunStats()
		enfStats = addStats(enfStats, e1.Sub(e0))
		return v
	}
	for b.Loop() {
		for round := 0; round < 6; round++ {
			// ABC then CBA: a drifting host biases no configuration.
			var x, y, z float64
			if round%2 == 0 {
				x, y, z = none(), empty(), enforced()
			} else {
				z, y, x = enforced(), empty(), none()
			}
			enfRatio = append(enfRatio, z/x)
			emptyRatio = append(emptyRatio, y/x)
			enfSum += z
			noneSum += x
		}
	}
	b.ReportMetric(median(enfRatio), "throughput-ratio-median")
	b.ReportMetric(slices.Min(enfRatio), "throughput-ratio-min")
	b.ReportMetric(median(emptyRatio), "empty-prog-ratio-median")
	b.ReportMetric(enfSum/float64(len(enfRatio))/1e9, "Gbit/s-enforcer")
	b.ReportMetric(noneSum/float64(len(enfRatio))/1e9, "Gbit/s-none")
	b.ReportMetric(float64(enfStats.PerRun().Nanoseconds()), "ns/run-enforcer")
	b.ReportMetric(float64(emptyStats.PerRun().Nanoseconds()), "ns/run-empty")
}

func addStats(a, b enforcer.RunStats) enforcer.RunStats {
	return enforcer.RunStats{Runs: a.Runs + b.Runs, RunTime: a.RunTime + b.RunTime}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// connRate: TCP connect + 1-byte echo + close from 2 workers for 1 s,
// 4 interleaved rounds per configuration.
func (n *benchNet) connRate(b *testing.B) {
	n.srv.ListenEcho(b, 8080)
	dst := netip.MustParseAddrPort("10.79.0.1:8080")
	count := func() float64 {
		var (
			mu    sync.Mutex
			total int
			wg    sync.WaitGroup
		)
		stop := time.Now().Add(time.Second)
		for w := 0; w < 2; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				local := 0
				_ = n.cli.Do(func() error {
					for time.Now().Before(stop) {
						c, err := net.DialTimeout("tcp", dst.String(), time.Second)
						if err != nil {
							return err
						}
						_ = c.(*net.TCPConn).SetLinger(0) // RST: no TIME_WAIT pile-up
						if err := netns.Echo(c, time.Second); err != nil {
							c.Close()
							return err
						}
						c.Close()
						local++
					}
					return nil
				})
				mu.Lock()
				total += local
				mu.Unlock()
			}()
		}
		wg.Wait()
		return float64(total)
	}
	var with, without float64
	for b.Loop() {
		for round := 0; round < 4; round++ {
			n.attach(b, false)
			without += count()
			n.attach(b, true)
			with += count()
		}
	}
	b.ReportMetric(ratio(with, without), "connrate-ratio")
	b.ReportMetric(with/float64(4*b.N), "conn/s-enforcer")
	b.ReportMetric(without/float64(4*b.N), "conn/s-none")
}

// revocable is a revocation list flipped by the benchmark.
type revocable struct {
	mu  sync.Mutex
	set map[string]bool
}

func (r *revocable) Revoked(s *big.Int, _ []byte) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.set[s.String()], nil
}

// BenchmarkAdmission measures the mutual admission handshake (TLS 1.3,
// SVID verification, kernel map writes) and revoke → drop latency with
// the default 250 ms re-check interval.
func BenchmarkAdmission(b *testing.B) {
	n := newBenchNet(b)
	n.attach(b, true)
	n.srv.ListenEcho(b, 8080)
	ca := testca.New(b, td)
	tdd := spiffeid.RequireTrustDomainFromString(td)
	bundle := x509bundle.FromX509Authorities(tdd, []*x509.Certificate{ca.Root()})
	pol, err := enforcer.ParsePolicy([]byte(testPolicy))
	if err != nil {
		b.Fatal(err)
	}
	mk := func(id string, table enforcer.PeerTable, rev enforcer.RevocationChecker) (*enforcer.Admitter, *big.Int) {
		_, chain, key := ca.MintX509SVID(b, id, time.Hour)
		a, err := enforcer.NewAdmitter(enforcer.AdmitterOptions{Table: table,
			SVID:     &x509svid.SVID{ID: spiffeid.RequireFromString(id), Certificates: chain, PrivateKey: key},
			Verifier: &enforcer.Verifier{TrustDomain: tdd, Bundle: bundle, Revocation: rev},
			Policy:   pol, AdmissionPort: 7443, MaxAdmission: time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		return a, chain[0].SerialNumber
	}
	srvRev := &revocable{set: map[string]bool{}}
	srvAdm, _ := mk(serverID, n.dp, srvRev)
	cliAdm, _ := mk(clientID, nullTable{}, allowAll{})
	var cliSerial *big.Int
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var ln net.Listener
	if err := n.srv.Do(func() (err error) { ln, err = enforcer.ListenAdmission(ctx, "10.79.0.1:7443"); return err }); err != nil {
		b.Fatal(err)
	}
	go func() { _ = srvAdm.Serve(ctx, ln) }()
	go srvAdm.RecheckLoop(ctx, enforcer.DefaultRecheckInterval)
	target := netip.MustParseAddrPort("10.79.0.1:7443")
	admit := func() time.Duration {
		var d time.Duration
		if err := n.cli.Do(func() error {
			start := time.Now()
			_, err := cliAdm.Admit(ctx, target)
			d = time.Since(start)
			return err
		}); err != nil {
			b.Fatal(err)
		}
		return d
	}
	var hs, cut []time.Duration
	for b.Loop() {
		for i := 0; i < 200; i++ {
			hs = append(hs, admit())
		}
		// revoke → drop, with fresh SVIDs each time (serials are revoked).
		for i := 0; i < 5; i++ {
			cliAdm, cliSerial = mk(clientID, nullTable{}, allowAll{})
			admit()
			c, err := n.cli.Dial(netip.Addr{}, netip.MustParseAddrPort("10.79.0.1:8080"), time.Second)
			if err != nil {
				b.Fatal(err)
			}
			if err := netns.Echo(c, time.Second); err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			revokeAll(srvRev, []*big.Int{cliSerial})
			for time.Since(start) < 5*time.Second {
				if err := netns.Echo(c, 20*time.Millisecond); err != nil {
					break
				}
			}
			cut = append(cut, time.Since(start))
			c.Close()
		}
	}
	slices.Sort(hs)
	slices.Sort(cut)
	b.ReportMetric(float64(hs[len(hs)/2].Microseconds())/1000, "ms-handshake-p50")
	b.ReportMetric(float64(hs[len(hs)*99/100].Microseconds())/1000, "ms-handshake-p99")
	b.ReportMetric(float64(cut[len(cut)/2].Milliseconds()), "ms-revoke-to-drop-p50")
	b.ReportMetric(float64(cut[len(cut)-1].Milliseconds()), "ms-revoke-to-drop-max")
}

func revokeAll(r *revocable, serials []*big.Int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range serials {
		r.set[s.String()] = true
	}
}
