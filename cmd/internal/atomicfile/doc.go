// Package atomicfile writes the files the binaries hand to operators and
// peers (trust bundles, SVIDs and their keys, fetched bundles) so that a
// crash or a full disk leaves each file old or new, never torn, and a
// failure while writing a set leaves the whole set old. Only a crash
// between a set's renames (no I/O but the renames) leaves it mixed.
package atomicfile
