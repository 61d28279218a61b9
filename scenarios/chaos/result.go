package chaos

import (
	"fmt"
	"strconv"
	"strings"
)

// Result is what one run found.
type Result struct {
	Scenario string
	Seed     uint64
	Nodes    int
	// Files is the number of files verified at the end: the data set and
	// the workload's fsync'd files.
	Files int
	// BytesVerified is the bytes of those files that read back with their
	// SHA-256 through both the mount and a fresh second mount (each file
	// counted once).
	BytesVerified int64
	// Lost is the number of the files' blocks with no live copy at the end.
	Lost int
	// Corrupt counts reads (workload or final) that returned wrong bytes.
	Corrupt int64
	// ReadErrors counts reads that failed (workload and final).
	ReadErrors  int64
	WriteErrors int64
	// Heal is the seconds from the scenario's chaos until every block had
	// R live copies; -1 if that was not seen.
	Heal    float64
	Seconds float64
	// Extra are scenario-specific key=value pairs for the summary line.
	Extra       [][2]string
	Failures    []string
	Interrupted bool
}

// Pass reports whether the run found nothing wrong.
func (r Result) Pass() bool { return len(r.Failures) == 0 }

// Line is the one-line summary:
//
//	scenario=kill-one files=… bytes_verified=… lost=0 read_errors=0 heal_s=… corrupt=0 write_errors=0 seconds=… seed=… nodes=… [extra…] result=pass
func (r Result) Line() string {
	heal := "none"
	if r.Heal >= 0 {
		heal = fmt.Sprintf("%.1f", r.Heal)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "scenario=%s files=%d bytes_verified=%d lost=%d read_errors=%d heal_s=%s corrupt=%d write_errors=%d seconds=%.1f seed=%d nodes=%d",
		r.Scenario, r.Files, r.BytesVerified, r.Lost, r.ReadErrors, heal, r.Corrupt, r.WriteErrors, r.Seconds, r.Seed, r.Nodes)
	for _, kv := range r.Extra {
		fmt.Fprintf(&b, " %s=%s", kv[0], strings.ReplaceAll(kv[1], " ", "_"))
	}
	result := "pass"
	switch {
	case r.Interrupted:
		result = "interrupted"
	case !r.Pass():
		result = "fail"
	}
	fmt.Fprintf(&b, " result=%s", result)
	return b.String()
}

// ParseLine reads the key=value pairs of a summary line; ok is false when
// line is not one.
func ParseLine(line string) (kv map[string]string, ok bool) {
	if !strings.HasPrefix(line, "scenario=") {
		return nil, false
	}
	kv = map[string]string{}
	for _, f := range strings.Fields(line) {
		if k, v, found := strings.Cut(f, "="); found {
			kv[k] = v
		}
	}
	return kv, kv["result"] != ""
}

// ParseSize reads a byte count: 12345, 64KiB, 16MiB, 1GiB (K, M, G and
// KB, MB, GB mean the same powers of 1024).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(t), 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("size %q: want a number of bytes, optionally with KiB, MiB or GiB", s)
	}
	return int64(f * float64(mult)), nil
}

func formatBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
