package natsd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// MetaPeer is one server of the JetStream meta group as this server sees it.
type MetaPeer struct {
	Name    string
	Leader  bool
	Offline bool // not heard from recently
}

// MetaPeers lists the meta group's servers, this one included, as this
// server knows them: every server keeps the list, and learns who is offline
// from the servers' regular stats messages. Empty for a standalone server.
func (s *Server) MetaPeers() []MetaPeer {
	jsi, err := s.ns.Jsz(&server.JSzOptions{})
	if err != nil || jsi == nil || jsi.Meta == nil {
		return nil
	}
	out := []MetaPeer{{Name: s.ns.Name(), Leader: jsi.Meta.Leader == s.ns.Name()}}
	for _, p := range jsi.Meta.Replicas {
		if p == nil || p.Name == s.ns.Name() {
			continue
		}
		out = append(out, MetaPeer{Name: p.Name, Leader: p.Name == jsi.Meta.Leader, Offline: p.Offline})
	}
	return out
}

// IsMetaLeader reports whether this server leads the JetStream meta group.
func (s *Server) IsMetaLeader() bool { return s.ns.JetStreamIsLeader() }

// Name is the server's name.
func (s *Server) Name() string { return s.ns.Name() }

// RemovePeer takes a server out of the JetStream meta group for good, so
// that it no longer counts toward the group's size and quorum. The server
// should be shut down first. The request goes to the meta leader through
// this server, as the system user; it is retried while the group has no
// leader, until ctx ends. Removing a server that is not in the group
// succeeds.
func (s *Server) RemovePeer(ctx context.Context, name string) error {
	if s.secret == "" {
		return errors.New("remove meta peer: the system user needs a secret")
	}
	nc, err := nats.Connect("", nats.InProcessServer(s.ns), nats.UserInfo(systemUser, s.secret), nats.Name("meshfs meta peer removal"))
	if err != nil {
		return fmt.Errorf("remove meta peer %s: connect as system user: %w", name, err)
	}
	defer nc.Close()
	req, _ := json.Marshal(server.JSApiMetaServerRemoveRequest{Server: name})
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		reply, err := nc.RequestWithContext(actx, server.JSApiRemoveServer, req)
		cancel()
		if err == nil {
			var resp server.JSApiMetaServerRemoveResponse
			if err := json.Unmarshal(reply.Data, &resp); err != nil {
				return fmt.Errorf("remove meta peer %s: decode reply %q: %w", name, reply.Data, err)
			}
			if resp.Error == nil || resp.Error.ErrCode == uint16(server.JSClusterServerNotMemberErr) {
				return nil
			}
			return fmt.Errorf("remove meta peer %s: %s", name, resp.Error.Description)
		}
		// No answer: no meta leader right now (only the leader answers).
		select {
		case <-ctx.Done():
			return fmt.Errorf("remove meta peer %s: %w (last error: %v)", name, ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
