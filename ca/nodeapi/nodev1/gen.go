// Package nodev1 holds the generated protobuf and gRPC code of the node API.
package nodev1

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative node.proto
