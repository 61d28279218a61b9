package chaos

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/meshfs/meshfs/scenarios/netns"
)

var zonesCount int
var zonesDelay time.Duration

// Zones: the nodes in --zones zones (--zone), each node in a network
// namespace of its own, with --zone-delay added to every packet between
// two zones, as in a mesh spread over sites, gossiping with the WAN
// profile (--gossip-profile wan). Placement must put each
// block's copies in different zones; then one whole zone is cut off (the
// one holding fewest metadata replicas, at most one) for --duration while
// readers and writers go on: no read may fail, nothing may be lost, and
// after the zone is back every block is at R copies, again spread over the
// zones.
var Zones = Scenario{
	Name:     "zones",
	Summary:  "nodes in zones with delay between them: copies spread over zones; cutting a whole zone off loses nothing and reads go on",
	Defaults: Defaults{Nodes: 6, Size: 8 << 20, Duration: 20 * time.Second},
	Flags: func(fs *flag.FlagSet) {
		fs.IntVar(&zonesCount, "zones", 3, "zones to spread the nodes over (at least 2, with 2 nodes each)")
		fs.DurationVar(&zonesDelay, "zone-delay", 50*time.Millisecond, "delay added to each packet between two zones, each way")
	},
	Run: runZones,
}

func runZones(ctx context.Context, e *Env) error {
	if zonesCount < 2 || e.Nodes < 2*zonesCount {
		return fmt.Errorf("zones: want at least 2 zones and 2 nodes in each (--zones %d, --nodes %d)", zonesCount, e.Nodes)
	}
	zoneOf := make([]string, e.Nodes)
	for i := range zoneOf {
		zoneOf[i] = fmt.Sprintf("z%d", i%zonesCount+1)
	}
	// Gossip timed for sites: a member across a slow link is not taken
	// for dead over a late answer.
	if err := e.UpInNet(ctx, zoneOf, "--gossip-profile", "wan"); err != nil {
		return err
	}
	hosts := map[string][]*netns.Host{}
	for i, z := range zoneOf {
		hosts[z] = append(hosts[z], e.Host(i))
	}
	zones := slices.Sorted(maps.Keys(hosts))
	for a := range zones {
		for b := a + 1; b < len(zones); b++ {
			if err := e.Net().ShapeBetween(hosts[zones[a]], hosts[zones[b]], netns.Shape{Delay: zonesDelay}); err != nil {
				return err
			}
		}
	}
	e.Logf("zones: %s, %v between two zones each way", describeZones(zoneOf), zonesDelay)
	if err := e.WriteDataSet(ctx); err != nil {
		return err
	}
	// Written with every zone up: spread at once.
	if !checkSpread(ctx, e, zoneOf, "before the cut", 0) {
		return nil
	}

	// Cut off the zone with the fewest metadata replicas.
	holders, err := e.needMetaHolders()
	if err != nil {
		return err
	}
	cut, fewest := "", e.Nodes
	for _, z := range zones {
		n := 0
		for i, zi := range zoneOf {
			if zi == z && holders[i] {
				n++
			}
		}
		if n < fewest {
			cut, fewest = z, n
		}
	}
	var rest []*netns.Host
	for _, z := range zones {
		if z != cut {
			rest = append(rest, hosts[z]...)
		}
	}
	w := e.StartWorkload(ctx, WorkloadOptions{Readers: 2, Writers: 1})
	if !Sleep(ctx, 2*time.Second) {
		return ctx.Err()
	}
	e.Logf("cutting zone %s off (%d metadata replicas there)", cut, fewest)
	e.Note("cut_zone", cut)
	if err := e.Net().Partition(rest, hosts[cut]); err != nil {
		return err
	}
	reads0, _, _, writes0, _ := w.Counts()
	Sleep(ctx, e.Duration)
	reads1, _, _, writes1, _ := w.Counts()
	e.Logf("zone %s back after %v: %d reads and %d fsync'd writes while it was cut off", cut, e.Duration, reads1-reads0, writes1-writes0)
	e.Note("reads_while_cut", reads1-reads0)
	e.Note("writes_while_cut", writes1-writes0)
	if reads1 == reads0 {
		e.Fail("no read completed while zone %s was cut off", cut)
	}
	e.Net().Heal()
	healed := time.Now()
	e.Finish(ctx, FinishOptions{Workload: w, HealSince: healed})
	// Blocks written while the zone was away have their copies in the
	// other zones: R copies, so healed, but not spread until the planner
	// moves one to its owner in the zone that came back.
	checkSpread(ctx, e, zoneOf, "after the heal", e.HealTimeout)
	return nil
}

// checkSpread checks, until it holds or within has passed, that every
// block of a known file has copies in min(R, zones) different zones, from
// the live nodes' own lists.
func checkSpread(ctx context.Context, e *Env, zoneOf []string, when string, within time.Duration) bool {
	t := time.Now()
	for {
		ok, last := spread(ctx, e, zoneOf, when)
		switch {
		case ok:
			e.Logf("%s: %s, %.1fs after the check began", when, last, time.Since(t).Seconds())
			e.Note("spread_"+strings.ReplaceAll(when, " ", "_")+"_s", fmt.Sprintf("%.1f", time.Since(t).Seconds()))
			return true
		case time.Since(t) >= within || !Sleep(ctx, time.Second):
			e.Fail("%s: %s", when, last)
			return false
		}
	}
}

// spread is one look of checkSpread: whether every block is spread, and
// what was seen.
func spread(ctx context.Context, e *Env, zoneOf []string, when string) (bool, string) {
	inv, err := e.Inventory(ctx)
	if err != nil {
		return false, fmt.Sprintf("inventory: %v", err)
	}
	zoneByName := map[string]string{}
	distinct := map[string]bool{}
	for i, z := range zoneOf {
		zoneByName[e.Node(i).Name] = z
		distinct[z] = true
	}
	want := min(e.R(), len(distinct))
	blocks, bad := 0, 0
	var example string
	for id := range e.Files.Blocks() {
		seen := map[string]bool{}
		for _, holder := range inv.Holders[id] {
			seen[zoneByName[holder]] = true
		}
		blocks++
		if len(seen) < want {
			bad++
			example = fmt.Sprintf("block %s has copies on %v", id, inv.Holders[id])
		}
	}
	e.Note("blocks_"+strings.ReplaceAll(when, " ", "_")+"_spread", fmt.Sprintf("%d/%d", blocks-bad, blocks))
	if bad > 0 {
		return false, fmt.Sprintf("%d of %d blocks have copies in fewer than %d zones (%s)", bad, blocks, want, example)
	}
	return true, fmt.Sprintf("all %d blocks have copies in %d zones", blocks, want)
}

func describeZones(zoneOf []string) string {
	by := map[string][]string{}
	for i, z := range zoneOf {
		by[z] = append(by[z], fmt.Sprintf("node%d", i+1))
	}
	var parts []string
	for _, z := range slices.Sorted(maps.Keys(by)) {
		parts = append(parts, z+"="+strings.Join(by[z], ","))
	}
	return strings.Join(parts, " ")
}
