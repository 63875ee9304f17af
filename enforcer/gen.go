package enforcer

// The generated files are committed so `go build` needs no clang. CI checks
// they are current with: go generate ./enforcer/ && git diff --exit-code enforcer/
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type flow_event -type admit_request -go-package enforcer -output-stem datapath_bpf palisade bpf/enforcer.c
