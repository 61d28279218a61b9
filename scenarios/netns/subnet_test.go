package netns

import (
	"net/netip"
	"testing"
)

func TestParseRoutes(t *testing.T) {
	out := []byte(`default via 192.0.2.1 dev eth0
192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2
local 192.0.2.2 dev eth0 table local proto kernel scope host src 192.0.2.2
broadcast 192.0.2.255 dev eth0 table local proto kernel scope link src 192.0.2.2
unreachable 10.20.0.0/16
`)
	want := []route{
		{netip.MustParsePrefix("192.0.2.0/24"), "eth0"},
		{netip.MustParsePrefix("192.0.2.2/32"), "eth0"},
		{netip.MustParsePrefix("192.0.2.255/32"), "eth0"},
		{netip.MustParsePrefix("10.20.0.0/16"), ""},
	}
	got := parseRoutes(out)
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("route %d: %v, want %v", i, got[i], want[i])
		}
	}
}

func TestConflicts(t *testing.T) {
	rs := []route{
		{netip.MustParsePrefix("10.0.0.0/8"), "vpn0"},
		{netip.MustParsePrefix("10.20.0.0/16"), "eth1"},
		{netip.MustParsePrefix("10.30.1.0/24"), "mine-r"},
	}
	for _, tc := range []struct {
		p        string
		ours     string
		conflict bool
	}{
		{"10.1.1.0/24", "", false}, // only the /8 covers it
		{"10.20.5.0/24", "", true},
		{"10.30.1.0/24", "", true},
		{"10.30.1.0/24", "mine-r", false},
	} {
		if got := conflicts(netip.MustParsePrefix(tc.p), rs, tc.ours); got != tc.conflict {
			t.Errorf("conflicts(%s, ours=%q) = %v, want %v", tc.p, tc.ours, got, tc.conflict)
		}
	}
	p, err := pickSubnet(rs)
	if err != nil || conflicts(p, rs, "") || p.Bits() != 24 || !netip.MustParsePrefix("10.0.0.0/8").Contains(p.Addr()) {
		t.Errorf("pickSubnet = %v, %v", p, err)
	}
}
