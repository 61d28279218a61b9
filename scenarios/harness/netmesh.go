package harness

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// NodeSpec says where and how StartMesh starts one node.
type NodeSpec struct {
	Name string
	// IP is the address the node listens on (gossip, block API, NATS),
	// each on a free port.
	IP   string
	Zone string // its --zone, if any
	// Command makes its process (nil: exec.Command); a node in a network
	// namespace gets one that enters it.
	Command func(name string, args ...string) *exec.Cmd
}

// StartMesh starts a mesh node by node, as 'meshfs up' would but with each
// node's address and process given by specs (nodes in network namespaces,
// in zones), then mounts it at DIR/mnt from this process's namespace. The
// first node gets nodeFlags as they are (--replicas, --block-size for the
// new mesh); the others get them too and adopt the mesh's. Stop stops it.
func StartMesh(ctx context.Context, bin, dir string, specs []NodeSpec, logf Logf, nodeFlags ...string) (*Mesh, error) {
	if len(specs) == 0 {
		return nil, fmt.Errorf("start a mesh: no nodes")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	secret := filepath.Join(dir, "secret")
	out, err := exec.CommandContext(ctx, bin, "secret").Output()
	if err != nil {
		return nil, fmt.Errorf("meshfs secret: %w", err)
	}
	if err := os.WriteFile(secret, out, 0o600); err != nil {
		return nil, err
	}
	m := &Mesh{Bin: bin, Dir: dir, logf: logf}
	m.State.SecretFile = secret
	fail := func(err error) (*Mesh, error) {
		if serr := m.Stop(); serr != nil {
			logf("stopping the half-started mesh: %v", serr)
		}
		return nil, err
	}
	for i, sp := range specs {
		data := filepath.Join(dir, sp.Name)
		if err := os.MkdirAll(data, 0o700); err != nil {
			return fail(err)
		}
		args := []string{bin, "node", "--data", data, "--name", sp.Name,
			"--gossip", net.JoinHostPort(sp.IP, "0"), "--api", net.JoinHostPort(sp.IP, "0"), "--nats", net.JoinHostPort(sp.IP, "0"),
			"--secret-file", secret}
		if sp.Zone != "" {
			args = append(args, "--zone", sp.Zone)
		}
		// No --join: Restart joins every node started before, at its
		// current address (also when one of them was restarted since).
		args = append(args, nodeFlags...)
		m.State.Nodes = append(m.State.Nodes, Node{Name: sp.Name, Data: data, Log: filepath.Join(data, "node.log"), Args: args, Command: sp.Command})
		nctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := m.Restart(nctx, i)
		cancel()
		if err != nil {
			return fail(fmt.Errorf("start %s: %w", sp.Name, err))
		}
	}
	c, err := m.Client()
	if err != nil {
		return fail(err)
	}
	info, err := c.Cluster(ctx, m.State.Nodes[0].HTTP)
	if err != nil {
		return fail(fmt.Errorf("ask %s about the mesh: %w", m.State.Nodes[0].Name, err))
	}
	m.State.Replicas, m.State.BlockSize = info.Replication, info.BlockSize
	m.State.Mount = filepath.Join(dir, "mnt")
	if err := os.MkdirAll(m.State.Mount, 0o755); err != nil {
		return fail(err)
	}
	if _, err := m.MountAgain(ctx, m.State.Mount); err != nil {
		return fail(fmt.Errorf("mount: %w", err))
	}
	names := make([]string, len(specs))
	for i, n := range m.State.Nodes {
		names[i] = n.Name + "@" + n.HTTP
	}
	logf("mesh of %d nodes (%s) mounted at %s", len(specs), strings.Join(names, ", "), m.State.Mount)
	return m, nil
}
