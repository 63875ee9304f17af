#!/usr/bin/env bash
# `make demo`: the appliance end to end on embedded defaults. A throw-away
# SoftHSM2 token, the key ceremony, palisade-server on 127.0.0.1, an
# X509-SVID minted from a CSR (the workload keeps its key) and verified with
# openssl, a second SVID revoked and seen revoked by openssl (OCSP, CRL),
# a JWT-SVID, and the audit log verified. Leaves demo-out/bundle.pem
# (trust roots) and demo-out/svid.pem (leaf, then its intermediate).
set -euo pipefail

ROOT=$(pwd)
BIN=${BIN:-$ROOT/bin}
OUT=${DEMO_OUT:-$ROOT/demo-out}
TD=demo.palisade.internal
WORK=$(mktemp -d /tmp/palisade-demo.XXXXXX)
SERVER_PID=""

cleanup() {
	if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
		kill "$SERVER_PID" 2>/dev/null || true
		wait "$SERVER_PID" 2>/dev/null || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }
fail() { echo "demo FAILED: $*" >&2; exit 1; }

free_port() {
	local p
	for p in $(seq "$1" $(( $1 + 200 ))); do
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
	done
	fail "no free port near $1"
}

MODULE=""
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so; do
	[ -e "$m" ] && MODULE=$m && break
done
[ -n "$MODULE" ] || fail "SoftHSM2 module not found (apt-get install softhsm2)"

rm -rf "$OUT"
mkdir -p "$OUT"

step "Creating a throw-away SoftHSM2 token"
export SOFTHSM2_CONF=$WORK/softhsm2.conf
mkdir -p "$WORK/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$WORK/tokens" > "$SOFTHSM2_CONF"
PIN=$(openssl rand -hex 8)
(umask 077; echo "$PIN" > "$WORK/hsm-pin")
softhsm2-util --init-token --free --label palisade-demo --so-pin "$(openssl rand -hex 8)" --pin "$PIN" >/dev/null

NODE_PORT=$(free_port 18443)
HTTP_PORT=$(free_port 18080)
METRICS_PORT=$(free_port 19090)
cat > "$WORK/server.yaml" <<YAML
data_dir: $WORK/data
hsm:
  token: "pkcs11:token=palisade-demo?module-path=$MODULE&pin-source=file:$WORK/hsm-pin"
ca:
  trust_domain: $TD
admin:
  socket: $WORK/admin.sock
node_api:
  listen: 127.0.0.1:$NODE_PORT
http:
  listen: 127.0.0.1:$HTTP_PORT
metrics:
  listen: 127.0.0.1:$METRICS_PORT
YAML
export PALISADE_ADMIN_SOCKET=$WORK/admin.sock

step "Key ceremony: root, audit key and first intermediate generated inside the HSM"
"$BIN/palisade" ceremony init -config "$WORK/server.yaml"

step "Re-running the ceremony must refuse and change nothing"
if "$BIN/palisade" ceremony init -config "$WORK/server.yaml" 2>"$WORK/rerun.err"; then
	fail "second ceremony succeeded"
fi
cat "$WORK/rerun.err"

step "Starting palisade-server on 127.0.0.1"
"$BIN/palisade-server" run -config "$WORK/server.yaml" 2>"$OUT/server.log" &
SERVER_PID=$!
for _ in $(seq 1 100); do
	"$BIN/palisade" healthcheck >/dev/null 2>&1 && break
	kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT/server.log"; fail "server exited"; }
	sleep 0.1
done
"$BIN/palisade" healthcheck -verbose

step "A workload generates its own key and CSR (openssl)"
openssl ecparam -genkey -name prime256v1 -noout -out "$OUT/key.pem"
openssl req -new -key "$OUT/key.pem" -subj "/O=demo" \
	-addext "subjectAltName=URI:spiffe://$TD/workload/web" -out "$OUT/csr.pem"

step "Registering the workload and minting its X509-SVID from the CSR"
"$BIN/palisade" entry create -spiffeID "spiffe://$TD/workload/web" \
	-parentID "spiffe://$TD/palisade/node/demo" -selector unix:uid:1000
"$BIN/palisade" x509 mint -csr "$OUT/csr.pem" -write "$OUT"
"$BIN/palisade" bundle show -format spiffe > "$OUT/bundle.spiffe.json"

step "Verifying the SVID with openssl"
openssl verify -CAfile "$OUT/bundle.pem" -untrusted "$OUT/svid.pem" "$OUT/svid.pem"
openssl x509 -in "$OUT/svid.pem" -noout -subject -ext subjectAltName,keyUsage,extendedKeyUsage,crlDistributionPoints,authorityInfoAccess -dates
cmp <(openssl pkey -in "$OUT/key.pem" -pubout) <(openssl x509 -in "$OUT/svid.pem" -noout -pubkey) \
	|| fail "SVID does not certify the workload's key"

step "Revocation: a second SVID, revoked; openssl asks OCSP and checks the CRL"
"$BIN/palisade" entry create -spiffeID "spiffe://$TD/workload/batch" \
	-parentID "spiffe://$TD/palisade/node/demo" -selector unix:uid:1001 >/dev/null
mkdir -p "$WORK/batch"
"$BIN/palisade" x509 mint -spiffeID "spiffe://$TD/workload/batch" -write "$WORK/batch"
openssl x509 -in "$WORK/batch/svid.pem" -out "$WORK/batch/leaf.pem"
sed -n '/END CERTIFICATE/,$p' "$WORK/batch/svid.pem" | tail -n +2 > "$WORK/batch/issuer.pem"
SERIAL=$(openssl x509 -in "$WORK/batch/leaf.pem" -noout -serial | cut -d= -f2)
"$BIN/palisade" revoke -serial "$SERIAL" -reason keyCompromise
ocsp_status() {
	openssl ocsp -issuer "$WORK/batch/issuer.pem" -cert "$1" -url "http://127.0.0.1:$HTTP_PORT/ocsp" \
		-CAfile "$OUT/bundle.pem" >"$WORK/ocsp.out" 2>&1 || true
	awk -v f="$1:" '$1 == f {print $2}' "$WORK/ocsp.out"
}
STATUS=""
for _ in $(seq 1 50); do
	STATUS=$(ocsp_status "$WORK/batch/leaf.pem")
	[ "$STATUS" = revoked ] && break
	sleep 0.1
done
echo "OCSP, revoked SVID: $STATUS"
[ "$STATUS" = revoked ] || { cat "$WORK/ocsp.out"; fail "OCSP does not report the revoked SVID"; }
openssl x509 -in "$OUT/svid.pem" -out "$WORK/web-leaf.pem"
STATUS=$(ocsp_status "$WORK/web-leaf.pem")
echo "OCSP, web SVID: $STATUS"
[ "$STATUS" = good ] || fail "OCSP does not report the web SVID good"
# The delta CRL carries a revocation at once; the full CRL follows within
# full_crl_min_interval. openssl combines both with -use_deltas.
CDP=$(openssl x509 -in "$WORK/batch/leaf.pem" -noout -ext crlDistributionPoints | grep -o 'http://[^ ]*')
DELTA=${CDP%.crl}-delta.crl
FOUND=""
for _ in $(seq 1 50); do
	curl -sf -o "$WORK/delta.der" "$DELTA" || true
	if openssl crl -inform DER -in "$WORK/delta.der" -noout -text 2>/dev/null | grep -qi "Serial Number: $SERIAL"; then
		FOUND=1
		break
	fi
	sleep 0.1
done
[ -n "$FOUND" ] || fail "serial $SERIAL not in the delta CRL at $DELTA"
curl -sf -o "$WORK/full.der" "$CDP" || fail "no full CRL at $CDP"
openssl crl -inform DER -in "$WORK/delta.der" -noout -text | sed -n '/Delta CRL Indicator/,+1p;/Serial Number/,+4p'
cat <(openssl crl -inform DER -in "$WORK/full.der") <(openssl crl -inform DER -in "$WORK/delta.der") > "$WORK/crls.pem"
if openssl verify -crl_check -use_deltas -CAfile "$OUT/bundle.pem" -CRLfile "$WORK/crls.pem" \
	-untrusted "$WORK/batch/issuer.pem" "$WORK/batch/leaf.pem" >"$WORK/crlcheck.out" 2>&1; then
	fail "openssl verify -crl_check accepted the revoked SVID"
fi
grep -q "certificate revoked" "$WORK/crlcheck.out" || { cat "$WORK/crlcheck.out"; fail "unexpected verify result"; }
echo "openssl verify -crl_check, revoked SVID: certificate revoked"
openssl verify -crl_check -use_deltas -CAfile "$OUT/bundle.pem" -CRLfile "$WORK/crls.pem" -untrusted "$OUT/svid.pem" "$OUT/svid.pem"

step "Minting a JWT-SVID (ES256, signed inside the HSM)"
"$BIN/palisade" jwt mint -spiffeID "spiffe://$TD/workload/web" -audience demo > "$OUT/jwt.txt"
cut -c1-60 "$OUT/jwt.txt"

step "Stopping the server and verifying the audit log"
kill "$SERVER_PID"
wait "$SERVER_PID" || true
SERVER_PID=""
"$BIN/palisade" audit verify -requireCheckpointAtEnd -config "$WORK/server.yaml"
cp "$WORK/data/audit.log" "$OUT/audit.log"

printf '\nDemo complete. Trust roots: %s\nSVID (leaf, intermediate): %s\n' "$OUT/bundle.pem" "$OUT/svid.pem"
