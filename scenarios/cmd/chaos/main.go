// Command chaos runs meshfs chaos scenarios (package scenarios/chaos):
//
//	chaos list                                 the scenarios and their defaults
//	chaos SCENARIO [flags] [-- NODE FLAGS]     run one; exit 1 if it fails
//	chaos run-all [flags] [-- NODE FLAGS]      run them all, one at a time; print a table
//
// Each run prints progress on stderr and its one-line summary on stdout.
// Flags after -- are given to every meshfs node. The scripts in scenarios/
// (kill-one, kill-many, …, run-all) build this program and run it.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/meshfs/meshfs/scenarios/chaos"
)

func main() {
	if len(os.Args) < 2 {
		usage(os.Stderr)
		os.Exit(2)
	}
	switch name := os.Args[1]; name {
	case "list":
		list(os.Stdout)
	case "run-all":
		os.Exit(runAll(os.Args[2:]))
	case "-h", "-help", "--help", "help":
		usage(os.Stdout)
	default:
		s := chaos.Lookup(name)
		if s == nil {
			fmt.Fprintf(os.Stderr, "chaos: no scenario %q\n\n", name)
			usage(os.Stderr)
			os.Exit(2)
		}
		os.Exit(runOne(s, os.Args[2:]))
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, `Usage:
  chaos list                                 the scenarios and their defaults
  chaos SCENARIO [flags] [-- NODE FLAGS]     run one scenario; exit 1 if it fails
  chaos run-all [flags] [-- NODE FLAGS]      run every scenario, one at a time, and print a table

'chaos SCENARIO -h' lists the flags. Scenarios:
`)
	list(w)
}

func list(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tNODES\tSIZE\tDURATION\tWHAT")
	for _, s := range chaos.All {
		d := s.Defaults
		fmt.Fprintf(tw, "%s\t%d\t%dMiB\t%v\t%s\n", s.Name, d.Nodes, d.Size>>20, d.Duration, s.Summary)
	}
	tw.Flush()
}

// common are the flags of every scenario (and of run-all, which passes
// the ones given on to each scenario).
type common struct {
	seed        uint64
	nodes       int
	size        string
	duration    time.Duration
	replicas    int
	blockSize   string
	healTimeout time.Duration
	meshfs      string
	tmp         string
	keep        bool
	verbose     bool
}

func (c *common) register(fs *flag.FlagSet, d chaos.Defaults) {
	fs.Uint64Var(&c.seed, "seed", 0, "seed of the data set, the workload and the chaos choices (0: a random one, printed)")
	fs.IntVar(&c.nodes, "nodes", d.Nodes, "data nodes of the mesh")
	fs.StringVar(&c.size, "size", fmt.Sprintf("%dMiB", d.Size>>20), "bytes of the seeded data set (KiB, MiB, GiB suffixes)")
	fs.DurationVar(&c.duration, "duration", d.Duration, "how long the chaos and the workload go on")
	fs.IntVar(&c.replicas, "replicas", 0, "copies of each block (meshfs up --replicas; 0: meshfs's default, 3)")
	fs.StringVar(&c.blockSize, "block-size", "1MiB", "block size of the mesh (small blocks make many blocks of little data)")
	fs.DurationVar(&c.healTimeout, "heal-timeout", 60*time.Second, "how long after the chaos every block must be back at R copies")
	fs.StringVar(&c.meshfs, "meshfs", os.Getenv("MESHFS_BIN"), "meshfs binary (default $MESHFS_BIN, else built from the module around the working directory, else meshfs on $PATH)")
	fs.StringVar(&c.tmp, "tmp", "", "directory for the scenario's temporary directory (default $TMPDIR or /tmp)")
	fs.BoolVar(&c.keep, "keep", false, "keep the temporary directory (nodes' logs and data) at the end")
	fs.BoolVar(&c.verbose, "v", false, "log more (meshfs up's output)")
}

// splitNodeFlags cuts args at "--": what follows goes to every node.
func splitNodeFlags(args []string) (own, node []string) {
	for i, a := range args {
		if a == "--" {
			return args[:i], args[i+1:]
		}
	}
	return args, nil
}

func runOne(s *chaos.Scenario, args []string) int {
	args, nodeFlags := splitNodeFlags(args)
	fs := flag.NewFlagSet(s.Name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: chaos %s [flags] [-- NODE FLAGS]\n\n%s.\n\nFlags:\n", s.Name, s.Summary)
		fs.PrintDefaults()
	}
	var c common
	c.register(fs, s.Defaults)
	if s.Flags != nil {
		s.Flags(fs)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "chaos %s: unexpected argument %q\n", s.Name, fs.Arg(0))
		return 2
	}
	size, err := chaos.ParseSize(c.size)
	if err != nil {
		fmt.Fprintf(os.Stderr, "chaos %s: --size: %v\n", s.Name, err)
		return 2
	}
	bs, err := chaos.ParseSize(c.blockSize)
	if err != nil || bs <= 0 {
		fmt.Fprintf(os.Stderr, "chaos %s: --block-size %q: want a positive size\n", s.Name, c.blockSize)
		return 2
	}
	if c.nodes < 1 {
		fmt.Fprintf(os.Stderr, "chaos %s: --nodes %d: want at least 1\n", s.Name, c.nodes)
		return 2
	}
	if c.seed == 0 {
		c.seed = rand.Uint64N(1<<31) + 1
	}
	cfg := chaos.Config{
		Seed: c.seed, Nodes: c.nodes, Size: size, Duration: c.duration, Replicas: c.replicas,
		BlockSize: int(bs), HealTimeout: c.healTimeout, Meshfs: c.meshfs, NodeFlags: nodeFlags,
		TempDir: c.tmp, Keep: c.keep, Verbose: c.verbose,
	}
	ctx, stop := interrupted()
	defer stop()
	res := chaos.Run(ctx, s, cfg, os.Stderr)
	for _, f := range res.Failures {
		fmt.Fprintf(os.Stderr, "%s: FAIL: %s\n", s.Name, f)
	}
	fmt.Println(res.Line())
	switch {
	case res.Interrupted:
		return 130
	case !res.Pass():
		return 1
	}
	return 0
}

// interrupted is a context cancelled by the first SIGINT, SIGTERM or
// SIGHUP; later ones are reported and otherwise ignored, so that the
// cleanup (unmounting, stopping nodes) is never cut short.
func interrupted() (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		n := 0
		for s := range sig {
			if n++; n == 1 {
				fmt.Fprintf(os.Stderr, "chaos: %v: stopping and cleaning up\n", s)
				cancel()
			} else {
				fmt.Fprintf(os.Stderr, "chaos: %v: still cleaning up (it ends by itself)\n", s)
			}
		}
	}()
	return ctx, func() { signal.Stop(sig); cancel() }
}

// runAll runs every scenario (or those of --only) in a child process of
// its own, one at a time, with the meshfs binary built once, and prints a
// table of their summary lines.
func runAll(args []string) int {
	args, nodeFlags := splitNodeFlags(args)
	fs := flag.NewFlagSet("run-all", flag.ContinueOnError)
	var c common
	c.register(fs, chaos.Defaults{})
	only := fs.String("only", "", "comma-separated scenarios to run (default: all)")
	skip := fs.String("skip", "", "comma-separated scenarios to leave out")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: chaos run-all [flags] [-- NODE FLAGS]\n\nRuns every scenario with its defaults, one at a time; --nodes, --size and --duration, if given, apply to all.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	var run []*chaos.Scenario
	for _, s := range chaos.All {
		if (*only == "" || hasName(*only, s.Name)) && !hasName(*skip, s.Name) {
			run = append(run, s)
		}
	}
	for _, n := range strings.Split(*only+","+*skip, ",") {
		if n = strings.TrimSpace(n); n != "" && chaos.Lookup(n) == nil {
			fmt.Fprintf(os.Stderr, "chaos run-all: no scenario %q\n", n)
			return 2
		}
	}
	// The flags given are passed on to every scenario (but -only, -skip).
	var pass []string
	fs.Visit(func(f *flag.Flag) {
		if f.Name != "only" && f.Name != "skip" && f.Name != "meshfs" && f.Name != "seed" {
			pass = append(pass, "--"+f.Name+"="+f.Value.String())
		}
	})
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "chaos run-all: %v\n", err)
		return 1
	}
	work, err := os.MkdirTemp(c.tmp, "meshfs-chaos-all-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "chaos run-all: %v\n", err)
		return 1
	}
	defer os.RemoveAll(work)
	ctx, stop := interrupted()
	defer stop()
	start := time.Now()
	bin := c.meshfs
	if bin == "" {
		if bin, err = chaos.FindOrBuildMeshfs(ctx, work); err != nil {
			fmt.Fprintf(os.Stderr, "chaos run-all: %v\n", err)
			return 1
		}
	}
	if c.seed == 0 {
		c.seed = rand.Uint64N(1<<31) + 1
	}
	fmt.Fprintf(os.Stderr, "run-all: %d scenarios, seed %d, meshfs %s\n", len(run), c.seed, bin)
	var rows []map[string]string
	failed := 0
	for _, s := range run {
		if ctx.Err() != nil {
			break
		}
		cargs := append([]string{s.Name, "--meshfs", bin, "--seed", fmt.Sprint(c.seed)}, pass...)
		if len(nodeFlags) > 0 {
			cargs = append(append(cargs, "--"), nodeFlags...)
		}
		row := runChild(ctx, self, cargs, filepath.Join(work, s.Name+".log"), c.verbose)
		row["scenario"] = s.Name
		if row["result"] != "pass" {
			failed++
		}
		rows = append(rows, row)
	}
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	cols := []string{"scenario", "result", "files", "bytes_verified", "lost", "read_errors", "heal_s", "seconds"}
	fmt.Fprintln(tw, strings.Join(cols, "\t")+"\t")
	for _, r := range rows {
		for _, col := range cols {
			v := r[col]
			if v == "" {
				v = "-"
			}
			fmt.Fprint(tw, v, "\t")
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	fmt.Printf("\nrun-all: %d of %d passed in %.0fs (seed %d)\n", len(rows)-failed, len(run), time.Since(start).Seconds(), c.seed)
	switch {
	case ctx.Err() != nil:
		return 130
	case failed > 0 || len(rows) < len(run):
		return 1
	}
	return 0
}

// runChild runs one scenario as 'self args…', its log into logPath (and
// to stderr when verbose), and returns its summary's fields.
func runChild(ctx context.Context, self string, args []string, logPath string, verbose bool) map[string]string {
	t := time.Now()
	fmt.Fprintf(os.Stderr, "run-all: %s …\n", args[0])
	row := map[string]string{"result": "fail"}
	lf, err := os.Create(logPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "run-all: %v\n", err)
		return row
	}
	defer lf.Close()
	cmd := exec.Command(self, args...)
	var logw io.Writer = lf
	if verbose {
		logw = io.MultiWriter(lf, os.Stderr)
	}
	cmd.Stderr = logw
	out, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintf(os.Stderr, "run-all: %v\n", err)
		return row
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "run-all: start %s: %v\n", args[0], err)
		return row
	}
	// A terminal's Ctrl-C reaches the child too; a SIGTERM to run-all is
	// passed on.
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			cmd.Process.Signal(syscall.SIGTERM)
		case <-stopped:
		}
	}()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(logw, line)
		if kv, ok := chaos.ParseLine(line); ok {
			row = kv
			fmt.Println(line)
		}
	}
	err = cmd.Wait()
	close(stopped)
	if row["seconds"] == "" {
		row["seconds"] = fmt.Sprintf("%.1f", time.Since(t).Seconds())
	}
	if err != nil && row["result"] == "pass" {
		row["result"] = "fail"
	}
	if row["result"] != "pass" {
		b, _ := os.ReadFile(logPath)
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		fmt.Fprintf(os.Stderr, "run-all: %s %s (%v); last lines of its log:\n%s\n", args[0], row["result"], err, strings.Join(lines[max(0, len(lines)-40):], "\n"))
	} else {
		fmt.Fprintf(os.Stderr, "run-all: %s passed in %ss\n", args[0], row["seconds"])
	}
	return row
}

func hasName(list, name string) bool {
	for _, n := range strings.Split(list, ",") {
		if strings.TrimSpace(n) == name {
			return true
		}
	}
	return false
}
