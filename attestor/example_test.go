package attestor_test

import (
	"context"
	"crypto/tls"
	"log"
	"log/slog"
	"net"

	"github.com/palisade-id/palisade/attestor"
	"github.com/palisade-id/palisade/attestor/store"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Example shows how palisade-server wires the attestation endpoint: the CA
// implements NodeIssuer, the audit log Auditor, revocation Revoker.
func Example() {
	var (
		issuer  attestor.NodeIssuer // the CA
		auditor attestor.Auditor    // the audit log
		revoker attestor.Revoker    // revocation
		cert    *tls.Certificate    // the endpoint's server certificate
	)
	db, err := store.Open("/var/lib/palisade/attestor.db")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	svc, err := attestor.New(context.Background(), spiffeid.RequireTrustDomainFromString("example.org"),
		attestor.Config{}, // from the server's YAML
		attestor.Deps{Store: db, Issuer: issuer, Auditor: auditor, Revoker: revoker, Logger: slog.Default()})
	if err != nil {
		log.Fatal(err)
	}
	gs := svc.NewGRPCServer(attestor.ServerTLSConfig(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil }))
	lis, err := net.Listen("tcp", "127.0.0.1:8444")
	if err != nil {
		log.Fatal(err)
	}
	go gs.Serve(lis)

	// Operator verbs map to Service methods (actor = authenticated operator):
	//   palisade manifest add <hash|pem> --class C  ParseManifestInput + AddManifestEntry
	//   palisade manifest remove <id>               RemoveManifestEntry
	//   palisade manifest list                      ManifestEntries
	//   palisade pcrpolicy set <file.yaml>          SetPCRPolicy
	//   palisade pcrpolicy show                     PCRPolicy
	//   palisade node list | show <id|hash>         Nodes | Node
	//   palisade node ban <id|hash> --reason R      BanNode(ctx, actor, ref, R, 1)
}
