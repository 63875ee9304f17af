package device

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"golang.org/x/sys/unix"
)

// MaxResponse caps a TPM response; TPM2 responses are at most a few KiB.
const MaxResponse = 64 << 10

// ErrTransport reports a malformed exchange with the TPM.
var ErrTransport = errors.New("device: TPM transport error")

// OpenDevice opens a TPM character device such as /dev/tpmrm0. It uses
// unix.Open and os.NewFile: a file from os.OpenFile goes through Go's poller,
// which makes TPM reads return EOF intermittently.
func OpenDevice(path string) (transport.TPMCloser, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("device: open %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR {
		unix.Close(fd)
		return nil, fmt.Errorf("device: %s is not a character device", path)
	}
	return &devTPM{f: os.NewFile(uintptr(fd), path)}, nil
}

// devTPM: the kernel returns a whole response to one read.
type devTPM struct {
	mu sync.Mutex
	f  *os.File
}

func (d *devTPM) Send(cmd []byte) ([]byte, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := d.f.Write(cmd); err != nil {
		return nil, fmt.Errorf("%w: write: %v", ErrTransport, err)
	}
	buf := make([]byte, MaxResponse)
	n, err := d.f.Read(buf)
	if err != nil {
		return nil, fmt.Errorf("%w: read: %v", ErrTransport, err)
	}
	if err := checkHeader(buf[:n]); err != nil {
		return nil, err
	}
	return buf[:n], nil
}

func (d *devTPM) Close() error { return d.f.Close() }

// DialSwtpm connects to swtpm's data port ("tcp", "127.0.0.1:2321" or
// "unix", path), which speaks raw TPM commands (not the Microsoft simulator
// framing of go-tpm's tcp transport). swtpm must run with
// --flags startup-clear or have received TPM2_Startup.
func DialSwtpm(network, addr string) (transport.TPMCloser, error) {
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("device: dial swtpm %s: %w", addr, err)
	}
	return &streamTPM{c: c}, nil
}

// streamTPM frames by the response header's size field.
type streamTPM struct {
	mu sync.Mutex
	c  net.Conn
}

func (s *streamTPM) Send(cmd []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.c.SetDeadline(time.Now().Add(2 * time.Minute)) // RSA keygen can be slow
	if _, err := s.c.Write(cmd); err != nil {
		return nil, fmt.Errorf("%w: write: %v", ErrTransport, err)
	}
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(s.c, hdr); err != nil {
		return nil, fmt.Errorf("%w: read header: %v", ErrTransport, err)
	}
	size := int(binary.BigEndian.Uint32(hdr[2:6]))
	if size < 10 || size > MaxResponse {
		return nil, fmt.Errorf("%w: response size %d", ErrTransport, size)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr)
	if _, err := io.ReadFull(s.c, rsp[10:]); err != nil {
		return nil, fmt.Errorf("%w: read body: %v", ErrTransport, err)
	}
	return rsp, nil
}

func (s *streamTPM) Close() error { return s.c.Close() }

func checkHeader(rsp []byte) error {
	if len(rsp) < 10 {
		return fmt.Errorf("%w: short response (%d bytes)", ErrTransport, len(rsp))
	}
	if size := int(binary.BigEndian.Uint32(rsp[2:6])); size != len(rsp) {
		return fmt.Errorf("%w: response says %d bytes, got %d", ErrTransport, size, len(rsp))
	}
	return nil
}

// Warning codes after which the TPM did not run the command and asks for
// it again (TPM 2.0 Part 2, 6.6.3).
const (
	rcYielded = 0x908
	rcTesting = 0x90A
	rcRetry   = 0x922
)

// retrying resends a command the TPM asked to retry.
type retrying struct{ transport.TPMCloser }

func (r retrying) Send(cmd []byte) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		rsp, err := r.TPMCloser.Send(cmd)
		if err != nil || len(rsp) < 10 || attempt == 50 {
			return rsp, err
		}
		switch binary.BigEndian.Uint32(rsp[6:10]) {
		case rcYielded, rcTesting, rcRetry:
			time.Sleep(10 * time.Millisecond)
			continue
		}
		return rsp, nil
	}
}
