// Package actors holds a node's long-running behaviours, each a goroutine
// that owns its state and is spoken to by messages: ownership, repair,
// scrub and collect. They arrive with the self-healing work; this package
// is their home.
package actors
