package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
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
	LostBlocks            int   `json:"lost_blocks"` // no live copy (their holders are down)
}

func runStatus(args []string) error {
	fs := newFlags("status", "meshfs status (--join ADDR | --up DIR) [--json]")
	var joins listFlag
	fs.Var(&joins, "join", "block API address of any node; repeatable")
	upDir := fs.String("up", "", "find the mesh from DIR/up.json (written by 'meshfs up DIR')")
	asJSON := fs.Bool("json", false, "print a JSON object instead of a table")
	secretFile := fs.String("secret-file", "", "file holding the cluster secret (or set MESHFS_SECRET; with --up, DIR/secret)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
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
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	client := blocknet.NewClient(secret.BlockKey(), 5*time.Second)
	view, err := blocknet.NewClusterView(ctx, client, joins, time.Hour)
	if err != nil {
		return err
	}
	defer view.Close()
	info := view.Info()
	rep := statusReport{ClusterID: info.ClusterID, BlockSize: info.BlockSize, Replication: info.Replication}
	// Every live node's inventory, planned as the nodes plan it, says
	// which blocks have fewer live copies than they should.
	copies := map[persist.BlockID]*actors.BlockCopies{}
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
		}
		rep.Members = append(rep.Members, sm)
	}
	blocks := make([]actors.BlockCopies, 0, len(copies))
	for _, bc := range copies {
		blocks = append(blocks, *bc)
	}
	plan := actors.Planner{Replicas: info.Replication}.Plan(time.Now(), info.Members, blocks)
	rep.Blocks = len(blocks)
	rep.UnderReplicatedBlocks, rep.UnderReplicatedBytes, rep.LostBlocks = plan.UnderReplicated, plan.UnderReplicatedBytes, len(plan.Lost)
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	fmt.Printf("cluster %s: %d members, %d copies of each %d-byte block\n", rep.ClusterID, len(rep.Members), rep.Replication, rep.BlockSize)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tZONE\tAPI\tBLOCKS\tBYTES\t")
	for _, m := range rep.Members {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\n", m.Name, m.State, m.Zone, m.HTTP, m.Blocks, m.Bytes, m.Error)
	}
	tw.Flush()
	fmt.Printf("blocks: %d (%d copies, %d bytes); under-replicated: %d blocks, %d bytes; lost: %d\n",
		rep.Blocks, rep.Copies, rep.Bytes, rep.UnderReplicatedBlocks, rep.UnderReplicatedBytes, rep.LostBlocks)
	return nil
}
