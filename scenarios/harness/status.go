package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// Status runs 'meshfs status --json' (bin) against the nodes whose block
// API addresses are addrs and decodes its output into v.
func Status(ctx context.Context, bin, secretFile string, addrs []string, v any) error {
	args := []string{"status", "--json", "--secret-file", secretFile}
	for _, a := range addrs {
		args = append(args, "--join", a)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("meshfs status: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	if err := json.Unmarshal(stdout.Bytes(), v); err != nil {
		return fmt.Errorf("meshfs status --json: %v", err)
	}
	return nil
}

// Metadata is the "metadata" object of 'meshfs status --json'.
type Metadata struct {
	Replicas int    `json:"replicas"`
	Current  int    `json:"current"` // replicas up to date
	Leader   string `json:"leader"`
	Witness  bool   `json:"witness"` // a witness still votes
	Error    string `json:"error"`
}

// Ready reports whether the metadata is as it should be in a mesh of n
// nodes: a leader, and one replica with fewer than three nodes, else three
// replicas up to date and no witness. A new mesh starts with one replica
// and raises it a few seconds after its third node is ready, so a node
// stopped before then may take the only one.
func (md Metadata) Ready(n int) bool {
	if n < 3 {
		return md.Leader != "" && md.Replicas >= 1 && md.Current >= 1
	}
	return md.Leader != "" && md.Replicas >= 3 && md.Current >= 3 && !md.Witness
}

// LiveAddrs lists the block API addresses of the nodes whose process runs.
func (m *Mesh) LiveAddrs() []string {
	var out []string
	for _, n := range m.State.Nodes {
		if alive(n.PID) {
			out = append(out, n.HTTP)
		}
	}
	return out
}

// WaitMetadata waits, for at most within, until 'meshfs status' run
// against the live nodes shows the metadata Ready for the mesh's nodes.
func (m *Mesh) WaitMetadata(ctx context.Context, within time.Duration) (Metadata, error) {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	var last string
	for {
		var st struct {
			Metadata Metadata `json:"metadata"`
		}
		err := Status(ctx, m.Bin, m.State.SecretFile, m.LiveAddrs(), &st)
		if err == nil && st.Metadata.Ready(len(m.State.Nodes)) {
			return st.Metadata, nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("%+v", st.Metadata)
		}
		select {
		case <-ctx.Done():
			return st.Metadata, fmt.Errorf("the metadata not ready (a leader and its replicas up to date) within %v; last: %s: %w", within, last, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}
