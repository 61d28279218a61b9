package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meshfs/meshfs/actors"
	"github.com/meshfs/meshfs/mesh/blocknet"
	"github.com/meshfs/meshfs/persist"
)

type statusMember struct {
	Name   string `json:"name"`
	State  string `json:"state"`
	Zone   string `json:"zone,omitempty"`
	HTTP   string `json:"http"`
	Blocks int64  `json:"blocks"` // copies held
	Bytes  int64  `json:"bytes"`
	Error  string `json:"error,omitempty"`
}

type statusRepair struct {
	RateBytes   float64 `json:"rate_bytes"`   // bytes/s copied, all nodes, last rounds
	ETASeconds  float64 `json:"eta_s"`        // under-replicated bytes / rate; -1 when unknown
	CopiedBytes int64   `json:"copied_bytes"` // since the nodes started
	Waiting     int     `json:"waiting"`      // copies held back by the repair delay
}

type statusScrub struct {
	Progress float64 `json:"progress"`       // of the current passes, 0..1
	Passes   int64   `json:"passes"`         // fewest full passes of any node
	Corrupt  int64   `json:"corrupt"`        // corrupt copies found
	ByPass   int64   `json:"found_by_pass"`  // of those, by the nodes' scrub passes
	ByWrite  int64   `json:"found_by_write"` // of those, replaced by a write of the block before a scrub found them
	ByDrop   int64   `json:"found_by_drop"`  // of those, surplus copies found rotten as repair dropped them; the rest were reported by readers
	Repaired int64   `json:"repaired"`       // of those, replaced
}

type statusReport struct {
	ClusterID   string         `json:"cluster_id"`
	BlockSize   int            `json:"block_size"`
	Replication int            `json:"replication"`
	Members     []statusMember `json:"members"`
	// Blocks counts distinct blocks on live nodes, Copies their copies.
	Blocks                int   `json:"blocks"`
	Copies                int64 `json:"copies"`
	Bytes                 int64 `json:"bytes"` // bytes of all copies
	UnderReplicatedBlocks int   `json:"under_replicated_blocks"`
	UnderReplicatedBytes  int64 `json:"under_replicated_bytes"`
	// LostBlocks counts blocks some file refers to that no live node
	// holds (their holders are down, or they are gone); LostError says why
	// they could not be counted (the metadata did not answer).
	LostBlocks    int           `json:"lost_blocks"`
	LostError     string        `json:"lost_error,omitempty"`
	Repair        statusRepair  `json:"repair"`
	Scrub         statusScrub   `json:"scrub"`
	Collect       statusCollect `json:"collect"`
	ActorRestarts int64         `json:"actor_restarts"` // actors restarted after a panic, all nodes
	// Metadata is the metadata cluster as the live nodes see it: the view
	// of the node that leads it, else of the first node that answered.
	Metadata metaInfo `json:"metadata"`

	held map[persist.BlockID]*actors.BlockCopies // blocks on live nodes
}

// referenced returns every block a file refers to, for counting the blocks
// that no live node holds. The nodes' inventories alone cannot show those:
// a block whose every copy is on a dead node is in no live inventory.
func referenced(ctx context.Context, refs *metaRefs) (map[persist.BlockID]bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	out := map[persist.BlockID]bool{}
	err := refs.ReferencedBlocks(ctx, func(id persist.BlockID) error {
		out[id] = true
		return nil
	})
	return out, err
}

// countLost sets the report's lost blocks: those referenced (read before
// the inventories) that no live node holds.
func countLost(rep *statusReport, refs map[persist.BlockID]bool, err error) {
	if err != nil {
		rep.LostError = fmt.Sprintf("could not read the block maps: %v", err)
		return
	}
	for id := range refs {
		if rep.held[id] == nil {
			rep.LostBlocks++
		}
	}
}

type statusCollect struct {
	Collected      int64 `json:"collected"` // unreferenced copies removed, all nodes
	CollectedBytes int64 `json:"collected_bytes"`
	Failed         int64 `json:"failed"` // collections that could not read the metadata
}

func runStatus(args []string) error {
	fs := newFlags("status", "meshfs status (--join ADDR | --up DIR) [--json | --watch]")
	var joins listFlag
	fs.Var(&joins, "join", "block API address of any node; repeatable")
	upDir := fs.String("up", "", "find the mesh from DIR/up.json (written by 'meshfs up DIR')")
	asJSON := fs.Bool("json", false, "print a JSON object instead of a table")
	watch := fs.Bool("watch", false, "redraw every second, with progress bars, until Ctrl-C")
	secretFile := fs.String("secret-file", "", "file holding the cluster secret (or set MESHFS_SECRET; with --up, DIR/secret)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	if *asJSON && *watch {
		return usagef("--json and --watch do not go together")
	}
	if *upDir != "" {
		st, err := readUpState(*upDir)
		if err != nil {
			return fmt.Errorf("read %s: %w (is a mesh up there?)", filepath.Join(*upDir, "up.json"), err)
		}
		for _, n := range st.Nodes {
			joins = append(joins, n.HTTP)
		}
		if *secretFile == "" {
			*secretFile = st.SecretFile
		}
	}
	if len(joins) == 0 {
		return usagef("give --join ADDR or --up DIR")
	}
	secret, err := loadSecret(*secretFile)
	if err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	client := blocknet.NewClient(secret.BlockKey(), 10*time.Second)
	vctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	view, err := blocknet.NewClusterView(vctx, client, joins, time.Second)
	cancel()
	if err != nil {
		return err
	}
	defer view.Close()
	blockMaps := &metaRefs{members: view.Members, token: secret.NATSToken(), client: "meshfs status", blockSize: view.Info().BlockSize}
	defer blockMaps.Close()
	for {
		// The block maps first: a file written after its inventory
		// was listed must not count as lost.
		refs, refsErr := referenced(ctx, blockMaps)
		rep := gatherStatus(ctx, client, view.Info())
		countLost(&rep, refs, refsErr)
		switch {
		case *asJSON:
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(rep)
		case !*watch:
			printStatus(os.Stdout, rep, false)
			return nil
		}
		fmt.Print("\033[H\033[2J")
		printStatus(os.Stdout, rep, true)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// gatherStatus asks every live node for its inventory and its actors'
// state, and plans over the inventories as the nodes do, which tells the
// blocks that have fewer live copies than they should.
func gatherStatus(ctx context.Context, client *blocknet.Client, info blocknet.ClusterInfo) statusReport {
	rep := statusReport{ClusterID: info.ClusterID, BlockSize: info.BlockSize, Replication: info.Replication}
	copies := map[persist.BlockID]*actors.BlockCopies{}
	var passBlocks, passChecked int64
	waiting := 0
	metaFrom := "" // the node whose metadata view the report shows
	rep.Scrub.Passes = -1
	for _, m := range info.Members {
		sm := statusMember{Name: m.Name, State: string(m.State), Zone: m.Zone, HTTP: m.HTTP}
		if m.Live() {
			err := client.List(ctx, m.HTTP, func(id persist.BlockID, size int) error {
				bc := copies[id]
				if bc == nil {
					bc = &actors.BlockCopies{ID: id, Size: int64(size)}
					copies[id] = bc
				}
				bc.Holders = append(bc.Holders, m.Name)
				sm.Blocks++
				sm.Bytes += int64(size)
				return nil
			})
			if err != nil {
				sm.Error = err.Error()
			}
			rep.Copies += sm.Blocks
			rep.Bytes += sm.Bytes
			if st, err := client.Stats(ctx, m.HTTP); err == nil && len(st.Actors) > 0 {
				var na nodeActors
				if json.Unmarshal(st.Actors, &na) == nil {
					// Each node counts the waiting copies of the blocks it
					// holds; the largest count is a floor for the mesh's.
					waiting = max(waiting, na.Repair.Waiting)
					rep.Repair.RateBytes += na.Repair.RateBytes
					rep.Repair.CopiedBytes += na.Repair.CopiedBytes
					rep.Scrub.Corrupt += na.Scrub.Corrupt
					rep.Scrub.ByPass += na.Scrub.FoundByPass
					rep.Scrub.ByWrite += na.Scrub.FoundByWrite
					rep.Scrub.ByDrop += na.Scrub.FoundByDrop
					rep.Scrub.Repaired += na.Scrub.Repaired
					passBlocks += na.Scrub.PassBlocks
					passChecked += na.Scrub.PassChecked
					if rep.Scrub.Passes < 0 || na.Scrub.Passes < rep.Scrub.Passes {
						rep.Scrub.Passes = na.Scrub.Passes
					}
					rep.Collect.Collected += na.Collect.Collected
					rep.Collect.CollectedBytes += na.Collect.CollectedB
					rep.Collect.Failed += na.Collect.Failed
					for _, n := range na.Restarts {
						rep.ActorRestarts += n
					}
					if (metaFrom == "" && na.Meta.Error == "") || na.Meta.MetaLeader == m.Name {
						rep.Metadata, metaFrom = na.Meta, m.Name
					}
				}
			}
		}
		rep.Members = append(rep.Members, sm)
	}
	blocks := make([]actors.BlockCopies, 0, len(copies))
	for _, bc := range copies {
		blocks = append(blocks, *bc)
	}
	plan := actors.Planner{Replicas: info.Replication}.Plan(time.Now(), info.Members, blocks)
	rep.Blocks = len(blocks)
	rep.UnderReplicatedBlocks, rep.UnderReplicatedBytes = plan.UnderReplicated, plan.UnderReplicatedBytes
	rep.held = copies
	rep.Repair.Waiting = waiting
	rep.Repair.ETASeconds = -1
	if rep.UnderReplicatedBytes == 0 {
		rep.Repair.ETASeconds = 0
	} else if rep.Repair.RateBytes > 0 {
		rep.Repair.ETASeconds = float64(rep.UnderReplicatedBytes) / rep.Repair.RateBytes
	}
	if rep.Scrub.Passes < 0 {
		rep.Scrub.Passes = 0
	}
	if passBlocks > 0 {
		rep.Scrub.Progress = float64(passChecked) / float64(passBlocks)
	}
	return rep
}

func printStatus(w io.Writer, rep statusReport, bars bool) {
	fmt.Fprintf(w, "cluster %s: %d members, %d copies of each %d-byte block\n", rep.ClusterID, len(rep.Members), rep.Replication, rep.BlockSize)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tZONE\tAPI\tBLOCKS\tBYTES\t")
	for _, m := range rep.Members {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\n", m.Name, m.State, m.Zone, m.HTTP, m.Blocks, m.Bytes, m.Error)
	}
	tw.Flush()
	fmt.Fprintf(w, "blocks: %d (%d copies, %d bytes)\n", rep.Blocks, rep.Copies, rep.Bytes)
	healthy := 1.0
	if rep.Blocks > 0 {
		healthy = 1 - float64(rep.UnderReplicatedBlocks)/float64(rep.Blocks)
	}
	eta := "-"
	if rep.Repair.ETASeconds >= 0 {
		eta = (time.Duration(rep.Repair.ETASeconds * float64(time.Second))).Round(time.Second).String()
	}
	lost := strconv.Itoa(rep.LostBlocks)
	if rep.LostError != "" {
		lost = "unknown (" + rep.LostError + ")"
	}
	fmt.Fprintf(w, "under-replicated: %d blocks, %d bytes; lost: %s; waiting for repair delay: %d\n",
		rep.UnderReplicatedBlocks, rep.UnderReplicatedBytes, lost, rep.Repair.Waiting)
	fmt.Fprintf(w, "repair: %.1f MiB/s, ETA %s, %d bytes copied so far\n", rep.Repair.RateBytes/(1<<20), eta, rep.Repair.CopiedBytes)
	fmt.Fprintf(w, "scrub: pass %d, %.0f%% of the current pass; corrupt copies found %d (%d by scrub passes, %d reported by readers, %d replaced by writes, %d dropped as surplus), repaired %d\n",
		rep.Scrub.Passes+1, 100*rep.Scrub.Progress, rep.Scrub.Corrupt, rep.Scrub.ByPass, rep.Scrub.Corrupt-rep.Scrub.ByPass-rep.Scrub.ByWrite-rep.Scrub.ByDrop,
		rep.Scrub.ByWrite, rep.Scrub.ByDrop, rep.Scrub.Repaired)
	fmt.Fprintf(w, "collect: %d unreferenced copies removed (%d bytes)\n", rep.Collect.Collected, rep.Collect.CollectedBytes)
	md := rep.Metadata
	switch {
	case md.Error != "":
		fmt.Fprintf(w, "metadata: unavailable: %s\n", md.Error)
	default:
		fmt.Fprintf(w, "metadata: %d replicas (%d up to date), leader %s; %d metadata servers", md.Replicas, md.Current, md.Leader, md.Servers)
		if md.Replicas < metaReplicas {
			fmt.Fprintf(w, " (fewer than %d: %d replica survives no node loss)", metaReplicas, md.Replicas)
		}
		if md.Witness {
			fmt.Fprint(w, "; a witness votes until there are 3")
		}
		fmt.Fprintln(w)
	}
	if rep.ActorRestarts > 0 {
		fmt.Fprintf(w, "actors restarted after a panic: %d (see the nodes' logs)\n", rep.ActorRestarts)
	}
	if bars {
		fmt.Fprintf(w, "replicated %s\n", bar(healthy))
		fmt.Fprintf(w, "scrubbed   %s\n", bar(rep.Scrub.Progress))
	}
}

func bar(f float64) string {
	const width = 40
	n := int(f*width + 0.5)
	n = min(max(n, 0), width)
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", width-n) + fmt.Sprintf("] %3.0f%%", 100*f)
}
