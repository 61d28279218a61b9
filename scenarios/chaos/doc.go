// Package chaos runs chaos scenarios against a real meshfs mesh: each one
// starts its own mesh ('meshfs up') in a temporary directory, writes a
// seeded data set of known SHA-256 through the mount, does its chaos
// (killing, restarting, corrupting, filling, adding nodes) while a workload
// of verifying readers and fsync'ing writers runs, and then checks what
// meshfs promises:
//
//   - every file the scenario knows (the data set, and every workload file
//     whose fsync returned) reads back with its SHA-256, through the mount
//     and through a fresh second mount;
//   - every block of those files is back at R live copies (per block, from
//     the nodes' inventories, and in 'meshfs status --json') before a
//     deadline;
//   - nothing the scenario started is left behind: processes, mounts (FUSE
//     and tmpfs) and the temporary directory, on every path out, Ctrl-C
//     included.
//
// A scenario is a Scenario value in a file of its own and one line in All.
// Run runs one and returns its Result, whose Line is the one-line summary
// (scenario=… files=… bytes_verified=… lost=… read_errors=… heal_s=… …).
// The program scenarios/cmd/chaos is the command line around it.
package chaos
