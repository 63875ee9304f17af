package enforcer

import (
	"fmt"
	"io"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// RunStats is the kernel's accounting of a program's runs (BPF stats).
type RunStats struct {
	Runs    uint64
	RunTime time.Duration
}

// PerRun is the mean run time.
func (s RunStats) PerRun() time.Duration {
	if s.Runs == 0 {
		return 0
	}
	return s.RunTime / time.Duration(s.Runs)
}

// Sub returns s - o.
func (s RunStats) Sub(o RunStats) RunStats {
	return RunStats{Runs: s.Runs - o.Runs, RunTime: s.RunTime - o.RunTime}
}

// EnableRunStats turns on kernel run-time accounting for all programs
// until the returned Closer is closed. It costs a little per run: for
// status and benchmarks, not left on.
func EnableRunStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		return nil, fmt.Errorf("enforcer: enable BPF stats: %w", err)
	}
	return c, nil
}

func runStats(p *ebpf.Program) (RunStats, error) {
	s, err := p.Stats()
	if err != nil {
		return RunStats{}, fmt.Errorf("enforcer: program stats: %w", err)
	}
	return RunStats{Runs: s.RunCount, RunTime: s.Runtime}, nil
}

// RunStats reads the ingress program's accounting.
func (d *Datapath) RunStats() (RunStats, error) { return runStats(d.objs.PalisadeIngress) }

// BaselineRunStats reads the empty program's accounting.
func (d *Datapath) BaselineRunStats() (RunStats, error) { return runStats(d.objs.PalisadeEmpty) }

// AttachBaseline attaches the empty program to ifindex's TCX ingress,
// unpinned, for benchmarks that compare against the cost of any program.
func (d *Datapath) AttachBaseline(ifindex int) (io.Closer, error) {
	l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: d.objs.PalisadeEmpty, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return nil, fmt.Errorf("enforcer: attach baseline: %w", err)
	}
	return l, nil
}
