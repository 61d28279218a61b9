package meta

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// This file speaks to JetStream directly: reading one key with its revision
// (also for deleted keys), writing several keys as one atomic batch, and
// scanning a key range.

// Header names and values of the KV and of atomic batches. nats.Header is
// case-sensitive, so these are sent exactly as written.
const (
	hdrKVOperation      = "KV-Operation"
	hdrMarkerReason     = "Nats-Marker-Reason"
	hdrExpectedSubjSeq  = "Nats-Expected-Last-Subject-Sequence"
	hdrMsgID            = "Nats-Msg-Id"
	hdrBatchID          = "Nats-Batch-Id"
	hdrBatchSeq         = "Nats-Batch-Sequence"
	hdrBatchCommit      = "Nats-Batch-Commit"
	kvOpDelete          = "DEL"
	kvOpPurge           = "PURGE"
	defaultMaxBatchSize = 1000 // the server's default limit of messages per atomic batch
)

// JetStream API error codes this package reacts to.
const (
	errCodeNoMessage        = 10037
	errCodeWrongLastSeq     = 10071
	errCodeDupInProcess     = 10158 // a message with this id is being stored: a resend overtook its first copy
	errCodeWrongLastSeqC    = 10164 // subject already written in this batch or in flight
	errCodeBatchIncomplete  = 10176
	errCodeBatchDuplicate   = 10201
	errCodeBatchTooInflight = 10210
)

// errConflict reports that a key changed between an operation's read and its
// write; the operation is retried from a fresh read.
var errConflict = errors.New("concurrent change")

// apiError is a JetStream API error as it appears in replies.
type apiError struct {
	Code        int    `json:"code"`
	ErrCode     int    `json:"err_code"`
	Description string `json:"description"`
}

func (e *apiError) Error() string {
	return fmt.Sprintf("jetstream: %s (status %d, code %d)", e.Description, e.Code, e.ErrCode)
}

// op is one key written by a commit.
type op struct {
	key string
	val []byte
	del bool
	// rev is the key's last revision as the operation read it; 0 means the
	// key must never have been written.
	rev uint64
}

// rawVal is one key as read: value and revision. A deleted key has found
// false but keeps the revision of its delete marker, which is what an
// expected-sequence check compares against.
type rawVal struct {
	val   []byte
	rev   uint64
	found bool
	msgID string // the Nats-Msg-Id the last message was written with
}

// attempt runs fn under its own short deadline (per) and repeats it, with
// backoff, while it fails in a way that another try can cure (no stream
// leader yet, a lost reply, too many batches in flight, a resend that finds
// its first copy still being stored), until ctx ends. fn must be
// idempotent.
func (s *Store) attempt(ctx context.Context, per time.Duration, fn func(ctx context.Context) error) error {
	backoff := 10 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, per)
		err := fn(actx)
		cancel()
		if err == nil || ctx.Err() != nil || !transient(err) {
			return err
		}
		if err := sleep(ctx, jitter(backoff)); err != nil {
			return err
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

func transient(err error) bool {
	var ae *apiError
	if errors.As(err, &ae) {
		// A resend answered "in process" (its first copy is being
		// stored) learns the outcome only by asking again: once the
		// first copy is applied the answer is "duplicate" (stored). If
		// it is never applied, a change of stream leader, or at the
		// latest the stream's duplicate window, clears the id and the
		// resend is taken; the commit's deadline bounds the wait.
		return ae.Code == 503 || ae.ErrCode == errCodeBatchTooInflight || ae.ErrCode == errCodeBatchIncomplete ||
			ae.ErrCode == errCodeDupInProcess
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrConnectionReconnecting) ||
		errors.Is(err, errWatchClosed) || unavailable(err)
}

// unavailable tells whether err is a JetStream API error with status 503
// as the nats.go client packages report them (making the consumer of a
// scan, say), rather than as apiError: no leader yet, or JetStream
// briefly unavailable while a server dies or comes back.
func unavailable(err error) bool {
	var legacy nats.JetStreamError
	if errors.As(err, &legacy) && legacy.APIError() != nil {
		return legacy.APIError().Code == 503
	}
	var js jetstream.JetStreamError
	if errors.As(err, &js) && js.APIError() != nil {
		return js.APIError().Code == 503
	}
	return false
}

func jitter(d time.Duration) time.Duration {
	return d/2 + time.Duration(rand.Int64N(int64(d)+1))
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// get reads the last message of key from the stream leader. It does not use
// the KV's Get: that hides a delete marker's revision. Nor a direct get: any
// replica may answer those, and a lagging one would break linearizability.
func (s *Store) get(ctx context.Context, key string) (rawVal, error) {
	m, err := s.msgGet(ctx, struct {
		LastBySubj string `json:"last_by_subj"`
	}{s.subjPrefix + key})
	switch {
	case err != nil:
		return rawVal{}, fmt.Errorf("read %s: %w", key, err)
	case m == nil:
		return rawVal{}, nil
	}
	// A delete marker keeps its revision: expectations compare with it.
	return rawVal{val: m.data, rev: m.seq, found: !m.deleted, msgID: m.msgID}, nil
}

// commit writes ops as one atomic batch (a single op as a plain publish):
// either every op is stored or none. It returns errConflict (wrapped) when a
// key's revision is not the one its op expects.
//
// Every message carries a Nats-Msg-Id fixed across resends, so a batch whose
// acknowledgement was lost can be sent again: if the first copy was stored,
// the server rejects the second as a duplicate, and that is the success the
// lost acknowledgement would have reported. A single message is checked for
// its expectation before its id, so there a resend that conflicts looks at
// the key: if its last message carries our id, the first copy was stored.
func (s *Store) commit(ctx context.Context, ops []op) error {
	switch {
	case len(ops) == 0:
		return nil
	case len(ops) > s.maxBatch:
		return fmt.Errorf("commit %d keys: more than the %d of one atomic batch", len(ops), s.maxBatch)
	}
	idBase := randomID()
	sent := false
	err := s.attempt(ctx, s.commitAttemptTimeout(ops), func(ctx context.Context) error {
		resend := sent
		sent = true
		return s.transmit(ctx, ops, idBase, resend)
	})
	if err != nil {
		return fmt.Errorf("commit %d keys (%s, …): %w", len(ops), ops[0].key, err)
	}
	return nil
}

// commitFloorRate is the slowest link, in bytes a second, over which a batch
// still commits: an attempt's deadline grows with the batch's size at this
// rate. The commit request is answered only after the server has received
// every message of the batch ahead of it, so a fixed deadline would abandon
// and resend a large batch on a slow link forever.
const commitFloorRate = 512 << 10

// commitAttemptTimeout is the deadline of one attempt to send ops: the
// store's per-attempt timeout plus the time the batch takes to cross a link
// of commitFloorRate.
func (s *Store) commitAttemptTimeout(ops []op) time.Duration {
	size := 0
	for _, o := range ops {
		// The subject and headers (expected sequence, ids, origin)
		// come to about 250 bytes next to the key and value.
		size += len(s.subjPrefix) + len(o.key) + len(o.val) + 250
	}
	return s.attemptTimeout + time.Duration(size)*time.Second/commitFloorRate
}

// transmit sends ops once; resend says whether an earlier transmission with
// the same ids may have been stored.
func (s *Store) transmit(ctx context.Context, ops []op, idBase string, resend bool) error {
	err := s.send(ctx, ops, idBase)
	if !resend || err == nil {
		return err
	}
	var ae *apiError
	if errors.As(err, &ae) && ae.ErrCode == errCodeBatchDuplicate {
		return nil
	}
	if len(ops) == 1 && errors.Is(err, errConflict) {
		v, gerr := s.get(ctx, ops[0].key)
		if gerr == nil && v.msgID == idBase+".1" {
			return nil
		}
	}
	return err
}

// send transmits ops once and waits for the acknowledgement.
func (s *Store) send(ctx context.Context, ops []op, idBase string) error {
	msg := func(i int, o op) *nats.Msg {
		m := nats.NewMsg(s.subjPrefix + o.key)
		m.Header.Set(hdrExpectedSubjSeq, strconv.FormatUint(o.rev, 10))
		m.Header.Set(hdrMsgID, idBase+"."+strconv.Itoa(i+1))
		m.Header.Set(hdrOrigin, s.origin)
		if o.del {
			m.Header.Set(hdrKVOperation, kvOpDelete)
		} else {
			m.Data = o.val
		}
		return m
	}
	var reply *nats.Msg
	var err error
	if len(ops) == 1 {
		reply, err = s.nc.RequestMsgWithContext(ctx, msg(0, ops[0]))
	} else {
		// A fresh batch id per transmission: the server keeps a failed
		// batch's id until it times out.
		batch := randomID()
		for i, o := range ops {
			m := msg(i, o)
			m.Header.Set(hdrBatchID, batch)
			m.Header.Set(hdrBatchSeq, strconv.Itoa(i+1))
			if i < len(ops)-1 {
				// The server stages these without an answer when there is
				// no reply subject; a problem with one surfaces as the
				// commit's error. One connection keeps them in order.
				if err := s.nc.PublishMsg(m); err != nil {
					return err
				}
				continue
			}
			m.Header.Set(hdrBatchCommit, "1")
			reply, err = s.nc.RequestMsgWithContext(ctx, m)
		}
	}
	if err != nil {
		return err
	}
	var ack struct {
		Error *apiError `json:"error"`
		Seq   uint64    `json:"seq"`
	}
	if len(reply.Data) == 0 {
		return errors.New("empty publish acknowledgement")
	}
	if err := json.Unmarshal(reply.Data, &ack); err != nil {
		return fmt.Errorf("decode publish acknowledgement %q: %w", reply.Data, err)
	}
	if ack.Error != nil {
		if ack.Error.ErrCode == errCodeWrongLastSeq || ack.Error.ErrCode == errCodeWrongLastSeqC {
			return fmt.Errorf("%w: %v", errConflict, ack.Error)
		}
		return ack.Error
	}
	if ack.Seq == 0 {
		return fmt.Errorf("publish acknowledgement without sequence: %q", reply.Data)
	}
	return nil
}

func randomID() string {
	var b [16]byte
	_, _ = crand.Read(b[:]) // never fails on supported platforms
	return hex.EncodeToString(b[:])
}

// scan calls fn for every live key matching filter (a key pattern with
// wildcards) with its value and revision, until fn returns false. It reads
// the latest value of each key through an ordered consumer that the scan
// deletes when it ends. The consumer may sit on any replica, a lagging one
// too: scan suits readers that need no recency (the collector, which has
// its grace period); directories use scanFresh.
func (s *Store) scan(ctx context.Context, filter string, fn func(key string, val []byte, rev uint64) bool) error {
	_, err := s.watchAll(ctx, filter, func(key string, val []byte, rev uint64, deleted bool) bool {
		return deleted || fn(key, val, rev)
	})
	return err
}

// liveKey is one key's latest value as scanFresh found it.
type liveKey struct {
	val []byte
	rev uint64
}

// scanFresh returns every live key matching filter with its latest value,
// as of some moment after scanFresh was called. It reads the keys through
// an ordered consumer, which may sit on a lagging replica, and then asks
// the stream's leader for every message after the last one the consumer
// delivered; keys that changed since are updated from the leader's answer.
func (s *Store) scanFresh(ctx context.Context, filter string) (map[string]liveKey, error) {
	live := make(map[string]liveKey)
	last, err := s.watchAll(ctx, filter, func(key string, val []byte, rev uint64, deleted bool) bool {
		if deleted {
			delete(live, key)
		} else {
			live[key] = liveKey{val: val, rev: rev}
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	for {
		m, err := s.nextBySubject(ctx, last+1, s.subjPrefix+filter)
		if err != nil {
			return nil, fmt.Errorf("scan %s: catch up with the leader: %w", filter, err)
		}
		if m == nil {
			return live, nil
		}
		key := strings.TrimPrefix(m.subject, s.subjPrefix)
		if m.deleted {
			delete(live, key)
		} else {
			live[key] = liveKey{val: m.data, rev: m.seq}
		}
		last = m.seq
	}
}

// watchAll delivers the latest message of every key matching filter,
// delete markers included, and returns the highest revision delivered. A
// consumer that goes quiet for attemptTimeout (its server died, say) is
// given up and the scan started again, until ctx ends.
func (s *Store) watchAll(ctx context.Context, filter string, fn func(key string, val []byte, rev uint64, deleted bool) bool) (uint64, error) {
	for backoff := 10 * time.Millisecond; ; backoff = min(2*backoff, 500*time.Millisecond) {
		last, err := s.watchOnce(ctx, filter, fn)
		if err == nil || ctx.Err() != nil || !transient(err) {
			if err != nil {
				return 0, fmt.Errorf("scan %s: %w", filter, err)
			}
			return last, nil
		}
		if err := sleep(ctx, jitter(backoff)); err != nil {
			return 0, fmt.Errorf("scan %s: %w", filter, err)
		}
	}
}

var errScanStalled = fmt.Errorf("scan stalled: %w", context.DeadlineExceeded)

// errWatchClosed: the scan's consumer was closed under it (its
// subscription ended, as when the connection is lost); a new scan may
// succeed.
var errWatchClosed = errors.New("watch closed early")

func (s *Store) watchOnce(ctx context.Context, filter string, fn func(key string, val []byte, rev uint64, deleted bool) bool) (uint64, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The watch lives as long as wctx; creating it may not take longer
	// than an attempt.
	stalled := time.AfterFunc(s.attemptTimeout, cancel)
	w, err := s.kv.WatchFiltered(wctx, []string{filter})
	if !stalled.Stop() {
		if err == nil {
			stopWatch(w)
		}
		return 0, errScanStalled
	}
	if err != nil {
		return 0, err
	}
	defer stopWatch(w)
	idle := time.NewTimer(s.attemptTimeout)
	defer idle.Stop()
	var last uint64
	for {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-idle.C:
			return 0, errScanStalled
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return 0, errWatchClosed
			case e == nil: // the end of the initial values
				return last, nil
			}
			last = max(last, e.Revision())
			deleted := e.Operation() != jetstream.KeyValuePut
			if !fn(e.Key(), e.Value(), e.Revision(), deleted) {
				return last, nil
			}
			idle.Reset(s.attemptTimeout)
		}
	}
}

// streamMsg is one message as the leader's message get returns it.
type streamMsg struct {
	subject string
	seq     uint64
	data    []byte // nil for a marker
	deleted bool   // a KV delete or purge marker
	msgID   string // the Nats-Msg-Id it was written with
}

// nextBySubject asks the stream leader for the first message at or after
// seq whose subject matches subject (wildcards allowed); nil when none.
func (s *Store) nextBySubject(ctx context.Context, seq uint64, subject string) (*streamMsg, error) {
	return s.msgGet(ctx, struct {
		Seq  uint64 `json:"seq"`
		Next string `json:"next_by_subj"`
	}{seq, subject})
}

// msgGet sends a message-get request to the stream leader, retrying as
// attempt does; nil when no message matches.
func (s *Store) msgGet(ctx context.Context, request any) (*streamMsg, error) {
	req, err := json.Marshal(request)
	if err != nil {
		return nil, err
	}
	var out *streamMsg
	err = s.attempt(ctx, s.attemptTimeout, func(ctx context.Context) error {
		reply, err := s.nc.RequestWithContext(ctx, s.msgGetSubj, req)
		if err != nil {
			return err
		}
		var resp struct {
			Error   *apiError `json:"error"`
			Message *struct {
				Subject string `json:"subject"`
				Seq     uint64 `json:"seq"`
				Hdrs    []byte `json:"hdrs"`
				Data    []byte `json:"data"`
			} `json:"message"`
		}
		if err := json.Unmarshal(reply.Data, &resp); err != nil {
			return fmt.Errorf("decode message get reply %q: %w", reply.Data, err)
		}
		switch {
		case resp.Error != nil && resp.Error.ErrCode == errCodeNoMessage:
			out = nil
			return nil
		case resp.Error != nil:
			return resp.Error
		case resp.Message == nil:
			return fmt.Errorf("message get reply without message: %q", reply.Data)
		}
		m := resp.Message
		out = &streamMsg{subject: m.Subject, seq: m.Seq, data: m.Data}
		if len(m.Hdrs) > 0 {
			h, err := nats.DecodeHeadersMsg(m.Hdrs)
			if err != nil {
				return fmt.Errorf("decode headers of %s: %w", m.Subject, err)
			}
			out.msgID = h.Get(hdrMsgID)
			if o := h.Get(hdrKVOperation); o == kvOpDelete || o == kvOpPurge || h.Get(hdrMarkerReason) != "" {
				out.data, out.deleted = nil, true
			}
		}
		return nil
	})
	return out, err
}

// stopWatch stops w and drains its channel until it closes: the watcher's
// delivery goroutine blocks on a full channel, and would never end if nobody
// read it.
func stopWatch(w jetstream.KeyWatcher) {
	_ = w.Stop()
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case _, ok := <-w.Updates():
			if !ok {
				return
			}
		case <-t.C:
			return
		}
	}
}

// rand64 returns a random number in [0, n).
func rand64(n int64) int64 {
	if n <= 0 {
		return 0
	}
	return rand.Int64N(n)
}
