package mesh

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

func startMember(t *testing.T, name string, secret string) *Membership {
	t.Helper()
	m, err := NewMembership(MembershipConfig{
		Self:   Member{Name: name, Gossip: "127.0.0.1:0", HTTP: "127.0.0.1:1" + name[len(name)-1:]},
		Secret: Secret(secret),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() { m.Leave(100 * time.Millisecond) })
	return m
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		if cond() {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v", what, within)
	return 0
}

func states(m *Membership) map[string]State {
	out := map[string]State{}
	for _, mem := range m.Members() {
		out[mem.Name] = mem.State
	}
	return out
}

func TestMembershipJoinSeenByAllAndDeath(t *testing.T) {
	a := startMember(t, "n1", "s3cret")
	b := startMember(t, "n2", "s3cret")
	c := startMember(t, "n3", "s3cret")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.Join(ctx, []string{a.Self().Gossip}); err != nil {
		t.Fatal(err)
	}
	if err := c.Join(ctx, []string{b.Self().Gossip}); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, "every member sees all three alive", 5*time.Second, func() bool {
		for _, m := range []*Membership{a, b, c} {
			s := states(m)
			if len(s) != 3 || s["n1"] != StateAlive || s["n2"] != StateAlive || s["n3"] != StateAlive {
				return false
			}
		}
		return true
	})
	t.Logf("all members saw each other after %v", took)
	// Node meta travels: a sees c's block API address.
	for _, mem := range a.Members() {
		if mem.Name == "n3" && mem.HTTP != "127.0.0.1:13" {
			t.Fatalf("n3's meta as seen by n1: %+v", mem)
		}
	}
	// Shut c down without a leave message: the others must declare it dead.
	c.Shutdown()
	took = waitFor(t, "n3 declared dead", 15*time.Second, func() bool {
		return states(a)["n3"] == StateDead && states(b)["n3"] == StateDead
	})
	t.Logf("death detected after %v", took)

	// The node restarts under the same name on another port: it must be
	// taken back, not refused as a name conflict.
	c2 := startMember(t, "n3", "s3cret")
	if err := c2.Join(ctx, []string{a.Self().Gossip}); err != nil {
		t.Fatal(err)
	}
	took = waitFor(t, "restarted n3 alive again", 10*time.Second, func() bool {
		return states(a)["n3"] == StateAlive && states(b)["n3"] == StateAlive
	})
	t.Logf("restarted node alive again after %v", took)
}

func TestMembershipWrongSecretCannotJoin(t *testing.T) {
	a := startMember(t, "n1", "right")
	x := startMember(t, "n9", "wrong")
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	err := x.Join(ctx, []string{a.Self().Gossip})
	if err == nil {
		t.Fatalf("a node with the wrong secret joined")
	}
	if _, ok := states(a)["n9"]; ok {
		t.Fatalf("n1 lists the intruder: %v", states(a))
	}
	t.Logf("refused as expected: %v", err)
}

func TestMembershipUpdateSelfGossips(t *testing.T) {
	a := startMember(t, "n1", "s")
	b := startMember(t, "n2", "s")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Join(ctx, []string{a.Self().Gossip}); err != nil {
		t.Fatal(err)
	}
	if err := a.UpdateSelf(ctx, func(m *Member) { m.BlockSize = 1 << 20; m.Zone = "z1" }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n2 sees n1's new meta", 5*time.Second, func() bool {
		for _, m := range b.Members() {
			if m.Name == "n1" {
				return m.BlockSize == 1<<20 && m.Zone == "z1"
			}
		}
		return false
	})
	_ = fmt.Sprint
}

// TestMembershipReconnectsDeadMembers: memberlist never probes a member it
// holds dead, so two sides of a healed partition would stay apart. Here
// n2's gossip stops without a word (as if cut off) and n1 declares it
// dead; then a process answers at n2's address again without joining
// anyone, as the other side of a healed partition does. n1 must find it by
// itself, and both must see each other alive.
func TestMembershipReconnectsDeadMembers(t *testing.T) {
	a := startMember(t, "n1", "s3cret")
	b := startMember(t, "n2", "s3cret")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.Join(ctx, []string{a.Self().Gossip}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n1 sees n2 alive", 5*time.Second, func() bool { return states(a)["n2"] == StateAlive })
	addr := b.Self().Gossip
	if err := b.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n1 declares n2 dead", 10*time.Second, func() bool { return states(a)["n2"] == StateDead })

	b2, err := NewMembership(MembershipConfig{
		Self:   Member{Name: "n2", Gossip: addr, HTTP: "127.0.0.1:12"},
		Secret: Secret("s3cret"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatalf("gossip again at %s: %v", addr, err)
	}
	defer b2.Leave(100 * time.Millisecond)
	took := waitFor(t, "n1 and n2 see each other alive again, n2 never joining", 15*time.Second, func() bool {
		return states(a)["n2"] == StateAlive && states(b2)["n1"] == StateAlive
	})
	t.Logf("reconnected %v after n2 answered again", took.Round(time.Millisecond))
}

func TestGossipProfile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		probe   time.Duration // the ProbeTimeout it leaves
		wantErr bool
	}{
		{name: "", probe: 250 * time.Millisecond},
		{name: GossipLAN, probe: 250 * time.Millisecond},
		{name: GossipWAN, probe: 1500 * time.Millisecond},
		{name: "moon", wantErr: true},
	} {
		tune, err := GossipProfile(tc.name)
		if (err != nil) != tc.wantErr {
			t.Fatalf("GossipProfile(%q): err %v, want error %v", tc.name, err, tc.wantErr)
		}
		if err != nil {
			continue
		}
		// As NewMembership applies it: over the LAN settings.
		mc := memberlist.DefaultLANConfig()
		mc.ProbeTimeout = 250 * time.Millisecond
		if tune != nil {
			tune(mc)
		}
		if mc.ProbeTimeout != tc.probe {
			t.Errorf("GossipProfile(%q): probe timeout %v, want %v", tc.name, mc.ProbeTimeout, tc.probe)
		}
		if mc.ProbeInterval <= mc.ProbeTimeout {
			t.Errorf("GossipProfile(%q): probe interval %v not above the timeout %v", tc.name, mc.ProbeInterval, mc.ProbeTimeout)
		}
	}
}
