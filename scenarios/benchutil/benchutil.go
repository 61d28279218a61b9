// Package benchutil is what the benchmark programs (scenarios/cmd/bench-meta,
// scenarios/cmd/bench-visibility) share: a 'meshfs up' mesh started through
// scenarios/harness and measured only once its metadata is fully replicated,
// and a sleep that ends with its context.
package benchutil

import (
	"context"
	"time"

	"github.com/meshfs/meshfs/scenarios/harness"
)

// Up runs 'meshfs up DIR --nodes N' with the binary bin (harness.Up) and
// waits until 'meshfs status' shows the metadata ready (harness.Metadata:
// one replica below 3 nodes, else 3 current ones). The caller stops the
// mesh (Mesh.Stop).
func Up(ctx context.Context, bin, dir string, nodes int, logf harness.Logf) (*harness.Mesh, error) {
	uctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	m, err := harness.Up(uctx, bin, dir, nodes, logf)
	if err != nil {
		return nil, err
	}
	md, err := m.WaitMetadata(ctx, 3*time.Minute)
	if err != nil {
		if serr := m.Stop(); serr != nil {
			logf("stopping the mesh: %v", serr)
		}
		return nil, err
	}
	logf("metadata: %d replicas, %d current, leader %s", md.Replicas, md.Current, md.Leader)
	return m, nil
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
