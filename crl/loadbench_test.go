package crl_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/palisade-id/palisade/crl"
)

// BenchmarkOCSPLoad drives the responder over loopback HTTP/1.1 with many
// concurrent keep-alive clients POSTing requests for 1,000 pre-signed
// certificates, and reports requests/s and p50/p99 latency. The load
// generator shares the machine's cores with the server.
func BenchmarkOCSPLoad(b *testing.B) {
	e := newEnv(b, crl.Config{})
	const certs = 1000
	reqs := make([][]byte, certs)
	for i := range reqs {
		leaf := e.mint(b, fmt.Sprint("n", i))
		reqs[i], _ = ocsp.CreateRequest(leaf, e.ca.Intermediate(), nil)
	}
	waitFor(b, "pre-signing", func() bool { return e.svc.Metrics().Signatures.Load() >= certs })
	for _, clients := range []int{16, 64, 256} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			tr := &http.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients, DisableCompression: true}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr}
			var next atomic.Int64
			lat := make([][]time.Duration, clients)
			var failed atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for c := 0; c < clients; c++ {
				wg.Add(1)
				go func(c int) {
					defer wg.Done()
					buf := make([]byte, 0, 1024)
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						t0 := time.Now()
						resp, err := client.Post(e.url+"/ocsp", "application/ocsp-request", bytes.NewReader(reqs[i%certs]))
						if err != nil {
							failed.Add(1)
							continue
						}
						buf, _ = readAll(resp.Body, buf[:0])
						resp.Body.Close()
						if resp.StatusCode != 200 || len(buf) < 100 {
							failed.Add(1)
						}
						lat[c] = append(lat[c], time.Since(t0))
					}
				}(c)
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			if failed.Load() > 0 {
				b.Fatalf("%d failed requests", failed.Load())
			}
			all := slices.Concat(lat...)
			slices.Sort(all)
			pct := func(p float64) float64 { return float64(all[int(float64(len(all)-1)*p)]) / 1e6 }
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "rps")
			b.ReportMetric(pct(0.50), "p50_ms")
			b.ReportMetric(pct(0.99), "p99_ms")
		})
	}
}

func readAll(r io.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// nullWriter is a ResponseWriter that keeps nothing, to time the handler
// alone.
type nullWriter struct{ h http.Header }

func (w *nullWriter) Header() http.Header         { return w.h }
func (w *nullWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *nullWriter) WriteHeader(int)             {}

// BenchmarkOCSPHandler times one pre-signed OCSP answer without the
// network: parse, lookup, headers. The rest of a request's cost is
// net/http and the kernel.
func BenchmarkOCSPHandler(b *testing.B) {
	e := newEnv(b, crl.Config{})
	leaf := e.mint(b, "n")
	der, _ := ocsp.CreateRequest(leaf, e.ca.Intermediate(), nil)
	waitFor(b, "pre-signing", func() bool { return e.svc.Metrics().Signatures.Load() >= 1 })
	h := e.svc.Handler()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		w := &nullWriter{h: http.Header{}}
		for pb.Next() {
			r, _ := http.NewRequest(http.MethodPost, "/ocsp", bytes.NewReader(der))
			clear(w.h)
			h.ServeHTTP(w, r)
		}
	})
	if e.svc.Metrics().CacheHits.Load() < uint64(b.N) {
		b.Fatalf("%d of %d requests missed the cache", uint64(b.N)-e.svc.Metrics().CacheHits.Load(), b.N)
	}
}
