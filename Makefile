# Palisade. `make demo` runs the appliance end to end on embedded defaults;
# `make test` runs every test. Both install what they need (Debian 12, root).

SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export PATH := $(PATH):/usr/sbin:/sbin

# Debian packages the tests, the demo and the benchmarks use.
APT_PACKAGES := softhsm2 opensc openssl swtpm swtpm-tools tpm2-tools clang llvm libbpf-dev \
	bpftool iperf3 wrk iproute2 protobuf-compiler ca-certificates curl

.PHONY: all deps build vet generate-check test test-unit test-integration fuzz demo bench clean

all: build

# Installs missing packages only; `apt-get update` runs first whenever
# something is missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

build:
	$(GO) build -o $(BIN)/ ./cmd/...

vet:
	$(GO) vet ./...
	$(GO) vet -tags integration ./test/...

# Generated code (bpf2go, protobuf) is committed; regenerating it must not
# change it.
generate-check: deps
	$(GO) generate ./enforcer/...
	git diff --exit-code -- enforcer

test: deps vet generate-check test-unit test-integration fuzz

test-unit:
	PALISADE_TEST_STRICT=1 $(GO) test -count=1 -timeout 20m ./...

test-integration: build
	PALISADE_TEST_STRICT=1 PALISADE_BIN=$(BIN) $(GO) test -count=1 -p 1 -timeout 40m -tags integration ./test/...

# A short coverage-guided run of each fuzz target on top of the seed corpora
# that test-unit already ran. The budget is a count, not a duration: Go 1.26's
# fuzz coordinator can report its own -fuzztime deadline as a failure
# ("context deadline exceeded", no crasher) on a loaded machine.
FUZZ_TIME ?= 30000x
fuzz:
	@mkdir -p $(BIN)
	@$(GO) test -list 'Fuzz.*' ./... | awk '/^Fuzz/ {f[n++]=$$1} /^ok/ {for (i = 0; i < n; i++) print f[i], $$2; n = 0}' | \
	while read fn pkg; do \
		echo "fuzz $$pkg $$fn ($(FUZZ_TIME))"; \
		PALISADE_TEST_STRICT=1 $(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZ_TIME) -timeout 10m $$pkg > $(BIN)/fuzz.log 2>&1 || { cat $(BIN)/fuzz.log; exit 1; }; \
	done

demo: deps build
	BIN=$(BIN) bash test/demo/demo.sh

# Each part's benchmarks, in one run: speed targets are measured here, never
# by timed tests. Numbers from a shared 2-core VM swing; compare ratios taken
# within one run.
bench: deps build
	@echo "== CA: durable SVID issuance vs raw HSM signing"
	$(GO) run ./test/bench/issuance
	@echo "== HSM: raw SoftHSM2 signing; the audit anchor update"
	$(GO) test -run '^$$' -bench '^BenchmarkSign' -cpu 1,2 -benchtime 2s ./ca/pkcs11/
	$(GO) test -run '^$$' -bench 'SetData|AuditCheckpoint' ./ca/pkcs11/
	@echo "== store and audit: durable records per second"
	$(GO) test -run '^$$' -bench '^BenchmarkRecordIssued$$' -cpu 1,2,8 -benchtime 2s ./ca/store/
	$(GO) test -run '^$$' -bench '^BenchmarkAppend$$' -cpu 1,2,8 -benchtime 2s ./ca/audit/
	@echo "== attestation: server-side verification rate and a full round trip against swtpm"
	$(GO) test -run '^$$' -bench VerifyAttestation -cpu 1,2 ./attestor/
	PALISADE_TEST_STRICT=1 $(GO) test -tags integration -run '^$$' -bench RoundTripSwtpm -benchtime 50x ./test/attestor/
	@echo "== revocation: OCSP over loopback, CRL build time"
	$(GO) test -run '^$$' -bench CRLBuild -benchtime 3x -benchmem ./crl/
	$(GO) test -run '^$$' -bench OCSPLoad -benchtime 200000x ./crl/
	PALISADE_TEST_STRICT=1 $(GO) test -tags integration -run '^$$' -bench 'OCSPWrk|CRLFromStore' -benchtime 1x ./test/crl/
	@echo "== enforcer: per-packet cost, iperf3 ratios, admission and revoke-to-drop latency"
	$(GO) test -run '^$$' -bench PerPacket ./enforcer/
	PALISADE_TEST_STRICT=1 $(GO) test -tags integration -run '^$$' -bench . -benchtime 1x ./test/enforcer/

clean:
	rm -rf $(BIN) demo-out
