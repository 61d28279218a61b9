package netns

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
)

// The /24 a Net uses is drawn at random from 10.0.0.0/8, so that Nets made
// at the same time by different processes rarely draw the same one; New
// checks again after it has claimed one (see conflicts, in claimSubnet).

// routeTypes are the words 'ip route' may print before a route's
// destination.
var routeTypes = map[string]bool{
	"unicast": true, "local": true, "broadcast": true, "multicast": true,
	"anycast": true, "unreachable": true, "blackhole": true, "prohibit": true,
	"throw": true, "nat": true,
}

// route is one IPv4 route of the root namespace: where to, and through
// which device ("" if none is named).
type route struct {
	dst netip.Prefix
	dev string
}

// routes lists the IPv4 routes of every table of the root namespace, and
// the addresses of its interfaces as routes to their subnets.
func routes(ctx context.Context) ([]route, error) {
	out, err := outputIP(ctx, "-4", "route", "show", "table", "all")
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	rs := parseRoutes(out)
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	for _, iface := range ifaces {
		addrs, err := iface.Addrs()
		if err != nil {
			return nil, fmt.Errorf("list addresses of %s: %w", iface.Name, err)
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if p, err := netip.ParsePrefix(ipn.String()); err == nil && p.Addr().Is4() {
					rs = append(rs, route{dst: p.Masked(), dev: iface.Name})
				}
			}
		}
	}
	return rs, nil
}

// parseRoutes reads the output of 'ip -4 route show'; lines it does not
// understand ("default", for one) are left out.
func parseRoutes(out []byte) []route {
	var rs []route
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 1 && routeTypes[f[0]] {
			f = f[1:]
		}
		if len(f) == 0 {
			continue
		}
		dst, err := netip.ParsePrefix(f[0])
		if err != nil {
			a, err := netip.ParseAddr(f[0])
			if err != nil || !a.Is4() {
				continue
			}
			dst = netip.PrefixFrom(a, 32)
		}
		r := route{dst: dst.Masked()}
		for i := 1; i+1 < len(f); i++ {
			if f[i] == "dev" {
				r.dev = f[i+1]
			}
		}
		rs = append(rs, r)
	}
	return rs
}

// conflicts reports whether p overlaps a route that is not through the
// device ours. Routes of /8 or wider (10.0.0.0/8 to a VPN, 0.0.0.0/1)
// are not conflicts: the /24 is more specific and wins for its addresses.
func conflicts(p netip.Prefix, rs []route, ours string) bool {
	for _, r := range rs {
		if r.dst.Bits() > 8 && r.dst.Overlaps(p) && (ours == "" || r.dev != ours) {
			return true
		}
	}
	return false
}

// pickSubnet draws a /24 in 10.0.0.0/8 that overlaps none of rs.
func pickSubnet(rs []route) (netip.Prefix, error) {
	for range 1000 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(rand.IntN(256)), byte(rand.IntN(256)), 0}), 24)
		if !conflicts(p, rs, "") {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("pick a /24 in 10.0.0.0/8: 1000 random ones all overlap a route")
}
