// Package netns puts processes in separate Linux network namespaces joined
// by a network that a chaos scenario can cut, delay and make lossy, without
// kernel modules: the kernels we run on have no sch_netem, no prio or sfq
// qdisc, and neither nftables nor iptables, so the network is a router in
// user space, run by the Go program that runs the scenario.
//
// One Net is one IPv4 /24 in 10.0.0.0/8 (chosen so that it overlaps no
// route or address of the machine, other than routes of /8 or wider). Its
// .1 is a TUN device in the root namespace, so the scenario's own process,
// and anything it starts outside a host, reaches every host directly. Each
// Host is a named namespace (/run/netns/<prefix>-<name>) with lo up and one
// TUN device, holding the next address of the /24 and the route to it.
// Every TUN device is opened by this process, then moved into its
// namespace; the router reads each IPv4 packet from the TUN it leaves by
// and writes it to the TUN of its destination address. Packets to other
// addresses, and packets that are not IPv4, are dropped.
//
// The router applies a policy that can be changed at any time:
//
//   - Partition splits the hosts into groups; a packet between different
//     groups is dropped. Hosts named in no group, and the root namespace,
//     belong to the first group. Heal removes the partition.
//   - ShapeHost delays and drops the packets a host sends and the packets
//     it receives; ShapeBetween those between two sets of hosts (zones).
//     Shapes that apply to one packet add up. Delay keeps the order of a
//     flow's packets unless there is jitter.
//
// A Net owns its goroutines (two per TUN device: a reader and a delay
// queue), TUN devices and namespaces; Close stops and removes all of them.
// It does not own the processes started in its hosts: stop them before
// Close, because a process left in a deleted namespace keeps that
// namespace alive, anonymously, until it exits.
//
// Host.Command runs a program in a host's network namespace only: it keeps
// the mount namespace of the caller (unlike 'ip netns exec', which unshares
// it), so a FUSE mount made by a program in a host is visible to the whole
// machine.
//
// Everything here needs root, /dev/net/tun, and the ip (iproute2) and
// nsenter programs; Available reports what is missing. RemoveStale deletes
// the namespaces left behind by a run that crashed; their TUN devices
// vanished with the process that held them.
package netns
