// Package benchutil is what the benchmark programs (scenarios/cmd/bench-meta,
// scenarios/cmd/bench-visibility) share: a 'meshfs up' mesh started through
// scenarios/harness and measured only once its metadata is fully replicated,
// and a sleep that ends with its context.
package benchutil

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"time"

	"github.com/meshfs/meshfs/scenarios/harness"
)

// Up runs 'meshfs up DIR --nodes N' with the binary bin (harness.Up) and
// waits until 'meshfs status' shows the metadata in min(nodes, 3) replicas,
// all current, with a leader. The caller stops the mesh (Mesh.Stop).
func Up(ctx context.Context, bin, dir string, nodes int, logf harness.Logf) (*harness.Mesh, error) {
	uctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	m, err := harness.Up(uctx, bin, dir, nodes, logf)
	if err != nil {
		return nil, err
	}
	if err := waitMetadata(ctx, m, min(nodes, 3), logf); err != nil {
		if serr := m.Stop(); serr != nil {
			logf("stopping the mesh: %v", serr)
		}
		return nil, err
	}
	return m, nil
}

// waitMetadata waits up to 3 minutes for the metadata bucket to have want
// replicas, all of them current, and a leader.
func waitMetadata(ctx context.Context, m *harness.Mesh, want int, logf harness.Logf) error {
	deadline := time.Now().Add(3 * time.Minute)
	var last string
	for {
		out, err := exec.CommandContext(ctx, m.Bin, "status", "--up", m.Dir, "--json").Output()
		var rep struct {
			Metadata struct {
				Replicas int    `json:"replicas"`
				Current  int    `json:"current"`
				Leader   string `json:"leader"`
			} `json:"metadata"`
		}
		if err == nil {
			err = json.Unmarshal(out, &rep)
		}
		if md := rep.Metadata; err == nil {
			if md.Replicas == want && md.Current == want && md.Leader != "" {
				logf("metadata: %d replicas, %d current, leader %s", md.Replicas, md.Current, md.Leader)
				return nil
			}
			last = fmt.Sprintf("replicas=%d current=%d leader=%q", md.Replicas, md.Current, md.Leader)
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("metadata not at %d current replicas within 3 minutes (last: %s)", want, last)
		}
		if err := Sleep(ctx, 500*time.Millisecond); err != nil {
			return err
		}
	}
}

// Sleep waits for d, or until ctx is done and returns its error.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
