package chaos

import (
	"context"
	"flag"
	"time"
)

// All lists every scenario, in the order 'chaos run-all' runs them. A new
// scenario is a file that defines its Scenario and one line here.
var All = []*Scenario{
	&KillOne,
	&KillMany,
	&RollingRestart,
	&Bitrot,
	&CrashDuringWrite,
	&DiskFull,
	&Churn,
	&Partition,
	&SlowNode,
	&Zones,
	&PowerLoss,
}

// Lookup returns the scenario named name, or nil.
func Lookup(name string) *Scenario {
	for _, s := range All {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Scenario is one chaos scenario.
type Scenario struct {
	// Name is how the command line names it (kill-one).
	Name string
	// Summary is one line for 'chaos list' and the scenario's --help.
	Summary string
	// Defaults are its CI-sized --nodes, --size and --duration.
	Defaults Defaults
	// Flags, if set, adds the scenario's own flags to fs; they are parsed
	// before Run is called.
	Flags func(fs *flag.FlagSet)
	// Run does the scenario on e: it starts the mesh (e.Up), writes the
	// data set, does its chaos under e.StartWorkload and ends with
	// e.Finish. It returns an error for a failure it cannot go on from;
	// e.Fail records the others. Run need not clean up: everything e
	// started is stopped after it returns, and when ctx is cancelled
	// (Ctrl-C) Run should return soon.
	Run func(ctx context.Context, e *Env) error
}

// Defaults are a scenario's sizes when the command line does not say.
type Defaults struct {
	Nodes    int
	Size     int64         // bytes of the data set
	Duration time.Duration // of the chaos under load
}

// Config is what the command line sets for one run.
type Config struct {
	Seed        uint64
	Nodes       int
	Size        int64
	Duration    time.Duration
	Replicas    int // copies of each block (meshfs up --replicas); 0: meshfs's default
	BlockSize   int // meshfs up --block-size
	HealTimeout time.Duration
	// Meshfs is the meshfs binary; empty: build it from the module around
	// the working directory, else find it on $PATH.
	Meshfs string
	// NodeFlags are given to every node after the scenario's own (the
	// later of two equal flags wins).
	NodeFlags []string
	// TempDir is where the scenario's temporary directory is made ("":
	// os.TempDir()).
	TempDir string
	// Keep keeps the temporary directory (the nodes' logs and data) after
	// the processes and mounts are gone.
	Keep bool
	// Verbose logs the harness's own lines (meshfs up's output) too.
	Verbose bool
}
