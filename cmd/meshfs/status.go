package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/meshfs/meshfs/mesh/blocknet"
)

type statusMember struct {
	Name   string `json:"name"`
	State  string `json:"state"`
	Zone   string `json:"zone,omitempty"`
	HTTP   string `json:"http"`
	Blocks int64  `json:"blocks"`
	Bytes  int64  `json:"bytes"`
	Error  string `json:"error,omitempty"`
}

type statusReport struct {
	ClusterID   string         `json:"cluster_id"`
	BlockSize   int            `json:"block_size"`
	Replication int            `json:"replication"`
	Members     []statusMember `json:"members"`
	// Blocks counts stored copies over all nodes (each block R times).
	Blocks int64 `json:"blocks"`
	Bytes  int64 `json:"bytes"`
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
	for _, m := range info.Members {
		sm := statusMember{Name: m.Name, State: string(m.State), Zone: m.Zone, HTTP: m.HTTP}
		if m.Live() {
			if st, err := client.Stats(ctx, m.HTTP); err != nil {
				sm.Error = err.Error()
			} else {
				sm.Blocks, sm.Bytes = st.Blocks, st.Bytes
				rep.Blocks += st.Blocks
				rep.Bytes += st.Bytes
			}
		}
		rep.Members = append(rep.Members, sm)
	}
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
	fmt.Printf("stored copies: %d blocks, %d bytes\n", rep.Blocks, rep.Bytes)
	return nil
}
