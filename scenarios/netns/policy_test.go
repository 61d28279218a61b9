package netns

import (
	"testing"
	"time"
)

func TestShapePlus(t *testing.T) {
	got := Shape{Delay: 10 * time.Millisecond, Jitter: time.Millisecond, Loss: 0.5}.
		plus(Shape{Delay: 5 * time.Millisecond, Loss: 0.5})
	want := Shape{Delay: 15 * time.Millisecond, Jitter: time.Millisecond, Loss: 0.75}
	if got != want {
		t.Errorf("plus = %+v, want %+v", got, want)
	}
	if (Shape{}).plus(Shape{}) != (Shape{}) {
		t.Error("zero plus zero is not zero")
	}
}

func TestShapeValid(t *testing.T) {
	for _, s := range []Shape{{Delay: -1}, {Jitter: -1}, {Loss: -0.1}, {Loss: 1.1}} {
		if s.valid() == nil {
			t.Errorf("%+v is valid", s)
		}
	}
	if err := (Shape{Delay: time.Second, Loss: 1}).valid(); err != nil {
		t.Error(err)
	}
}

func TestPolicy(t *testing.T) {
	const root, a, b, c = 1, 2, 3, 4
	p := (&policy{}).with(func(p *policy) {})
	if p.partitioned || p.shaped {
		t.Fatalf("empty policy: partitioned=%v shaped=%v", p.partitioned, p.shaped)
	}

	p = p.with(func(p *policy) { p.group[b] = 1 })
	for _, tc := range []struct {
		from, to byte
		cut      bool
	}{
		{root, a, false}, {a, root, false}, {a, c, false},
		{root, b, true}, {b, a, true}, {c, b, true},
	} {
		if got := p.cut(tc.from, tc.to); got != tc.cut {
			t.Errorf("cut(%d, %d) = %v, want %v", tc.from, tc.to, got, tc.cut)
		}
	}
	if healed := p.with(func(p *policy) { p.group = [256]int{} }); healed.partitioned {
		t.Error("partitioned after every group is 0 again")
	}

	ms := time.Millisecond
	p = p.with(func(p *policy) {
		p.host[a] = Shape{Delay: 10 * ms}
		p.between = map[linkKey]Shape{{a, b}: {Delay: 25 * ms}, {b, a}: {Delay: 25 * ms}}
	})
	if !p.shaped {
		t.Fatal("not shaped")
	}
	for _, tc := range []struct {
		from, to byte
		delay    time.Duration
	}{
		{root, a, 10 * ms}, {a, root, 10 * ms}, {a, b, 35 * ms}, {b, a, 35 * ms},
		{b, c, 0}, {root, b, 0},
	} {
		if got := p.link(tc.from, tc.to).Delay; got != tc.delay {
			t.Errorf("link(%d, %d).Delay = %v, want %v", tc.from, tc.to, got, tc.delay)
		}
	}
	if unshaped := p.with(func(p *policy) { p.host[a] = Shape{}; clear(p.between) }); unshaped.shaped {
		t.Error("shaped after every shape is removed")
	}
	if len(p.between) != 2 {
		t.Error("with changed the policy it copied")
	}
}
