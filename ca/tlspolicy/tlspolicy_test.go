package tlspolicy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// serve accepts connections until the listener closes and reports each
// handshake's outcome.
func serve(t *testing.T) (addr string, results chan error) {
	t.Helper()
	cfg := Apply(&tls.Config{Certificates: []tls.Certificate{selfSigned(t)}})
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	results = make(chan error, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			err = c.(*tls.Conn).Handshake()
			if err == nil {
				c.Write([]byte("ok"))
			}
			c.Close()
			results <- err
		}
	}()
	return ln.Addr().String(), results
}

func TestGoPeersNegotiateAES256(t *testing.T) {
	addr, results := serve(t)
	conn, err := tls.Dial("tcp", addr, Apply(&tls.Config{InsecureSkipVerify: true}))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	cs := conn.ConnectionState()
	if cs.CipherSuite != tls.TLS_AES_256_GCM_SHA384 || cs.Version != tls.VersionTLS13 {
		t.Fatalf("negotiated %s %s", tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite))
	}
	if err := <-results; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name    string
		cs      tls.ConnectionState
		wantErr bool
	}{
		{"tls13-aes256", tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_256_GCM_SHA384}, false},
		{"tls13-aes128", tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_AES_128_GCM_SHA256}, true},
		{"tls13-chacha", tls.ConnectionState{Version: tls.VersionTLS13, CipherSuite: tls.TLS_CHACHA20_POLY1305_SHA256}, true},
		{"tls12", tls.ConnectionState{Version: tls.VersionTLS12, CipherSuite: tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Check(tt.cs)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Check = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrCipherSuite) {
				t.Fatalf("error %v does not wrap ErrCipherSuite", err)
			}
		})
	}
}

// TestOpenSSLClientSuites drives a foreign client: offering only AES-128 or
// ChaCha20 must fail, offering AES-256 must succeed.
func TestOpenSSLClientSuites(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	addr, results := serve(t)
	tests := []struct {
		suite  string
		wantOK bool
	}{
		{"TLS_AES_256_GCM_SHA384", true},
		{"TLS_AES_128_GCM_SHA256", false},
		{"TLS_CHACHA20_POLY1305_SHA256", false},
	}
	for _, tt := range tests {
		t.Run(tt.suite, func(t *testing.T) {
			cmd := exec.Command("openssl", "s_client", "-connect", addr, "-tls1_3", "-ciphersuites", tt.suite, "-ign_eof")
			cmd.Stdin = strings.NewReader("")
			out, _ := cmd.CombinedOutput()
			err := <-results
			if tt.wantOK && err != nil {
				t.Fatalf("server refused %s: %v\n%s", tt.suite, err, out)
			}
			if !tt.wantOK && err == nil {
				t.Fatalf("server accepted %s\n%s", tt.suite, out)
			}
		})
	}
}
