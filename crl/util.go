package crl

import (
	"bytes"
	"context"
	"fmt"
	"strings"
)

type contextT = context.Context

func equalFold(a, b string) bool { return strings.EqualFold(a, b) }

func errReason(s string) error { return fmt.Errorf("%w: %q", ErrBadReason, s) }

func cutPrefix(s, p string) (string, bool) { return strings.CutPrefix(s, p) }
func cutSuffix(s, p string) (string, bool) { return strings.CutSuffix(s, p) }

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
