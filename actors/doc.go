// Package actors holds a node's long-running behaviours, each a goroutine
// that owns its state and is spoken to by messages: ownership, repair,
// scrub and collect. They arrive with the self-healing work; this package
// is their home.
//
// Their decisions come from a pure core, Planner: membership and block
// inventories in, copies and drops out, with no I/O, no goroutines and no
// clock, so every node computes the same plan and the planning is tested
// apart from the network, on simulated meshes of up to 1,000 nodes and 10
// million blocks (sim_test.go). An actor is the thin loop around it: gather
// inventories, plan, execute its own part of the plan, plan again.
package actors
