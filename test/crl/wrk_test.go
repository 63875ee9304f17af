//go:build integration

package crl

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
	"golang.org/x/sys/unix"

	"github.com/palisade-id/palisade/crl"
	"github.com/palisade-id/palisade/crl/memsource"
	"github.com/palisade-id/palisade/test/testca"
	"github.com/palisade-id/palisade/test/testenv"
)

type memKeys struct{ keys map[string]crypto.Signer }

func (k *memKeys) Signer(l string) (crypto.Signer, error) {
	if s, ok := k.keys[l]; ok {
		return s, nil
	}
	return nil, errors.New("no key")
}

func (k *memKeys) GenerateSigner(l string) (crypto.Signer, error) {
	s, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k.keys[l] = s
	return s, err
}

type nopAudit struct{}

func (nopAudit) Append(context.Context, string, string, any) error { return nil }

// BenchmarkOCSPWrk measures the OCSP responder with wrk (a C load
// generator, lighter than Go's HTTP client) over loopback: GET requests
// for 1,000 pre-signed certificates through a Lua script, 1 wrk thread,
// varying connections. Reports rps and p50/p99 latency. Serving does no
// signing, so in-memory keys measure the same path as the HSM.
func BenchmarkOCSPWrk(b *testing.B) {
	testenv.Require(b, "wrk")
	ca := testca.New(b, "example.org")
	st := memsource.New()
	inter := ca.Intermediate()
	iss := crl.Issuer{KeyID: hex.EncodeToString(inter.SubjectKeyId), Cert: inter, Signer: ca.IssuerSigner(), Active: true}
	svc, err := crl.New(crl.Config{DataDir: b.TempDir()}, crl.Options{Store: st, Audit: nopAudit{},
		Keys: &memKeys{keys: map[string]crypto.Signer{}}, Issuers: crl.IssuersFunc(func() []crl.Issuer { return []crl.Issuer{iss} })})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go svc.Run(ctx)
	var paths []string
	for i := 0; i < 1000; i++ {
		leaf, _, _ := ca.MintX509SVID(b, fmt.Sprintf("spiffe://example.org/w/%d", i), time.Hour)
		st.Add(crl.CertInfo{Serial: leaf.SerialNumber, IssuerKeyID: iss.KeyID, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter})
		svc.Issued(leaf.SerialNumber, iss.KeyID, leaf.NotAfter)
		req, _ := ocsp.CreateRequest(leaf, inter, nil)
		paths = append(paths, "/ocsp/"+url.PathEscape(base64.StdEncoding.EncodeToString(req)))
	}
	for deadline := time.Now().Add(20 * time.Second); svc.Metrics().Signatures.Load() < 1000; {
		if time.Now().After(deadline) {
			b.Fatal("pre-signing did not finish")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := svc.NewHTTPServer(&http.Server{Handler: svc.Handler()})
	go srv.Serve(ln)
	defer srv.Close()
	script := filepath.Join(b.TempDir(), "paths.lua")
	var sb strings.Builder
	sb.WriteString("paths = {\n")
	for _, p := range paths {
		fmt.Fprintf(&sb, "%q,\n", p)
	}
	sb.WriteString("}\ni = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(\"GET\", paths[(i % #paths) + 1])\nend\n")
	if err := os.WriteFile(script, []byte(sb.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	// "1cert" requests one URL (wrk's fast path, no Lua per request);
	// "1000certs" rotates through all of them via Lua, which costs wrk
	// (not the server) noticeably more CPU. "shared": server and wrk float
	// over both cores; "split": the server is pinned to core 0 with
	// GOMAXPROCS=1 and wrk to core 1, so neither preempts the other.
	for _, layout := range []string{"shared", "split"} {
		for _, mode := range []string{"1cert", "1000certs"} {
			for _, conns := range []int{16, 32, 64, 256} {
				b.Run(fmt.Sprintf("%s/%s/conns=%d", layout, mode, conns), func(b *testing.B) {
					args := []string{"wrk", "-t1", "-c" + strconv.Itoa(conns), "-d5s", "--latency"}
					if mode == "1cert" {
						args = append(args, "http://"+ln.Addr().String()+paths[0])
					} else {
						args = append(args, "-s", script, "http://"+ln.Addr().String())
					}
					if layout == "split" {
						testenv.Require(b, "taskset")
						defer pinProcess(b, 0)()
						args = append([]string{"taskset", "-c", "1"}, args...)
					}
					runWrk(b, args)
				})
			}
		}
	}
}

// pinProcess binds every thread of this process to cpu and sets
// GOMAXPROCS to 1; threads started later inherit the binding. The
// returned func undoes both.
func pinProcess(b *testing.B, cpu int) func() {
	var one, all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		b.Fatal(err)
	}
	if all.Count() < 2 {
		b.Skip("needs two CPUs")
	}
	one.Set(cpu)
	setAll := func(set *unix.CPUSet) {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			b.Fatal(err)
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			if err := unix.SchedSetaffinity(tid, set); err != nil && !errors.Is(err, unix.ESRCH) {
				b.Fatalf("pin thread %d: %v", tid, err)
			}
		}
	}
	setAll(&one)
	prev := runtime.GOMAXPROCS(1)
	return func() {
		runtime.GOMAXPROCS(prev)
		setAll(&all)
	}
}

func runWrk(b *testing.B, args []string) {
	var rps, p50, p99, total float64
	var cpu time.Duration
	for i := 0; i < b.N; i++ {
		var ru0, ru1 syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
		cpu = time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
		if err != nil {
			b.Fatalf("wrk: %v\n%s", err, out)
		}
		if strings.Contains(string(out), "Non-2xx") || strings.Contains(string(out), "Socket errors") {
			b.Fatalf("errors:\n%s", out)
		}
		rps, p50, p99 = parseWrk(b, string(out))
		m := reTotal.FindStringSubmatch(string(out))
		if m == nil {
			b.Fatalf("no request count:\n%s", out)
		}
		total, _ = strconv.ParseFloat(m[1], 64)
	}
	b.ReportMetric(rps, "rps")
	b.ReportMetric(p50, "p50_ms")
	b.ReportMetric(p99, "p99_ms")
	// The server's own CPU per request (user+system, this process; wrk is
	// a child and not counted).
	b.ReportMetric(float64(cpu.Microseconds())/total, "server_cpu_us/req")
}

var (
	reTotal = regexp.MustCompile(`([0-9]+) requests in`)
	reRPS   = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	rePct   = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)`)
)

func parseWrk(b *testing.B, out string) (rps, p50, p99 float64) {
	m := reRPS.FindStringSubmatch(out)
	if m == nil {
		b.Fatalf("no Requests/sec in wrk output:\n%s", out)
	}
	rps, _ = strconv.ParseFloat(m[1], 64)
	for _, m := range rePct.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		switch m[3] {
		case "us":
			v /= 1000
		case "s":
			v *= 1000
		}
		if m[1] == "50" {
			p50 = v
		} else {
			p99 = v
		}
	}
	return rps, p50, p99
}
