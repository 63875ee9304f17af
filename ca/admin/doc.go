// Package admin is palisade-server's operator API: JSON over HTTP on a unix
// socket that only root (or the configured operator group) can open. Each
// request is attributed to the peer's kernel credentials (SO_PEERCRED), so
// the audit log says which operator account acted; nothing on the network
// can reach it.
//
// Domains register their routes with Handle; Client is the typed side used
// by the palisade CLI.
package admin
