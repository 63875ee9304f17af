// Package atomicfile writes the files the binaries hand to operators and
// peers (trust bundles, SVIDs and their keys, fetched bundles) so that a
// crash or a full disk leaves either the old content or the new, never a
// torn file or a key beside a certificate it does not match.
package atomicfile
