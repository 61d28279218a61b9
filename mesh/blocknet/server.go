package blocknet

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/meshfs/meshfs/persist"
)

const (
	// maxBlockBody caps a PUT body and a GET answer. The server does not know
	// the cluster's block size (the store does, and says ErrTooLarge), so
	// this only keeps a broken or hostile peer from making it buffer an
	// unbounded body; it is well above any sane block size.
	maxBlockBody = 64 << 20
	// listFlushEvery is how many "hexid size" lines go out between flushes,
	// so a long listing streams instead of sitting in buffers.
	listFlushEvery = 512
)

// server is the block API of one node.
type server struct {
	cfg     ServerConfig
	now     func() time.Time // the clock signatures are checked against
	maxBody int64            // maxBlockBody; tests lower it
	// bufs recycles the buffers (*[]byte) that PUT bodies are read into
	// and GET answers loaded into, so moving a block does not allocate and
	// zero a fresh multi-MiB slice each time.
	bufs sync.Pool
	// roomMu guards incoming: the bytes of new blocks being stored now,
	// which the stats do not show yet, so that concurrent PUTs cannot
	// together pass the room each of them saw.
	roomMu     sync.Mutex
	incoming   int64
	refusedLog time.Time // when refuse last logged
}

// buffer returns a buffer from s.bufs, to be put back when done with it.
func (s *server) buffer() *[]byte {
	if bp, ok := s.bufs.Get().(*[]byte); ok {
		return bp
	}
	return new([]byte)
}

// recycle puts bp back into s.bufs, keeping data's array instead when it is
// the larger: data was read into a new slice because *bp was too small.
func (s *server) recycle(bp *[]byte, data []byte) {
	if cap(data) > cap(*bp) {
		*bp = data[:0]
	}
	s.bufs.Put(bp)
}

// blockLoader is implemented by stores that can hand out a block without
// verifying its hash, into a buffer of the caller's (*persist.Store does).
// The block API serves GETs through it when it can: every reader verifies
// what it receives (Client.Get does, and must, since a node may be buggy or
// the bytes damaged on the way), so hashing on the node as well would only
// double the CPU a read costs. A corrupt copy is then caught by the reader,
// which skips it as it skips a 409.
type blockLoader interface {
	Load(ctx context.Context, id persist.BlockID, buf []byte) ([]byte, error)
}

// NewServer returns the block API handler:
//
//	PUT    /v1/blocks/{id}  store (body = content; 400 hash mismatch, 413 too large, 507 disk full)
//	GET    /v1/blocks/{id}  content (404 missing, 409 with the body "corrupt" for a corrupt copy
//	                        if the store verifies reads; see blockLoader)
//	HEAD   /v1/blocks/{id}  200 with Content-Length, or 404
//	DELETE /v1/blocks/{id}  204
//	GET    /v1/blocks       one "hexid size" line per block, streamed
//	GET    /v1/cluster      ClusterInfo as JSON
//	GET    /v1/stats        NodeStats as JSON
//
// A listing that fails after it started streaming is cut off without its
// final chunk, so the client sees a truncated body, never a short list that
// looks complete.
func NewServer(cfg ServerConfig) http.Handler { return newServer(cfg).handler() }

func newServer(cfg ServerConfig) *server {
	if cfg.Store == nil {
		// Wiring error: fail at startup, not on the first request.
		panic("blocknet.NewServer: ServerConfig.Store is nil")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if len(cfg.Secret) == 0 {
		cfg.Logger.Warn("block API has an empty cluster secret: anyone who can reach it can sign requests")
	}
	return &server{cfg: cfg, now: time.Now, maxBody: maxBlockBody}
}

func (s *server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/blocks/{id}", s.putBlock)
	mux.HandleFunc("GET /v1/blocks/{id}", s.getBlock)
	mux.HandleFunc("HEAD /v1/blocks/{id}", s.headBlock)
	mux.HandleFunc("DELETE /v1/blocks/{id}", s.deleteBlock)
	mux.HandleFunc("POST /v1/blocks/{id}/check", s.checkBlock)
	mux.HandleFunc("POST /v1/blocks/{id}/touch", s.touchBlock)
	mux.HandleFunc("GET /v1/blocks", s.listBlocks)
	mux.HandleFunc("GET /v1/cluster", s.cluster)
	mux.HandleFunc("GET /v1/stats", s.stats)
	return s.authenticate(mux)
}

// authenticate refuses unsigned requests before routing, so that nothing,
// not even whether a path exists, is revealed without the secret.
func (s *server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := checkAuth(s.cfg.Secret, r, s.now()); err != nil {
			s.fail(w, r, http.StatusUnauthorized, "unauthorized: "+err.Error(), nil)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// fail writes a plain-text error. Only 5xx are logged: 4xx are the caller's
// problem and are reported to the caller.
func (s *server) fail(w http.ResponseWriter, r *http.Request, code int, msg string, err error) {
	if code >= 500 {
		s.cfg.Logger.Error("block API request failed",
			"method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr,
			"status", code, "err", err)
	}
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	// No trailing newline: a 409's body is exactly "corrupt".
	io.WriteString(w, msg)
}

// refuse answers 507 for a block the node has no room for. A full node
// refuses every block written or copied to it, so the log says so at most
// once a minute rather than per request.
func (s *server) refuse(w http.ResponseWriter, r *http.Request, err error) {
	s.roomMu.Lock()
	now := time.Now()
	quiet := now.Sub(s.refusedLog) < time.Minute
	if !quiet {
		s.refusedLog = now
	}
	s.roomMu.Unlock()
	if !quiet {
		s.cfg.Logger.Warn("refusing new blocks: no room", "err", err, "remote", r.RemoteAddr)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusInsufficientStorage)
	io.WriteString(w, err.Error())
}

// blockID parses the {id} path value, answering 400 if it is not one.
func (s *server) blockID(w http.ResponseWriter, r *http.Request) (persist.BlockID, bool) {
	id, err := persist.ParseBlockID(r.PathValue("id"))
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err.Error(), nil)
		return id, false
	}
	return id, true
}

// clientGone reports whether a failure is only the caller hanging up, which
// is not worth a 5xx log line (and nobody would read the answer).
func clientGone(r *http.Request) bool { return r.Context().Err() != nil }

func (s *server) putBlock(w http.ResponseWriter, r *http.Request) {
	id, ok := s.blockID(w, r)
	if !ok {
		return
	}
	if r.ContentLength > s.maxBody {
		s.fail(w, r, http.StatusRequestEntityTooLarge,
			fmt.Sprintf("body of %d bytes exceeds the %d-byte limit", r.ContentLength, s.maxBody), nil)
		return
	}
	// Room is taken before the body is read: a full node is offered every
	// copy repair wants it to hold, round after round, and should not
	// receive a block only to refuse it. A body of unknown length may be
	// as long as the limit.
	size := r.ContentLength
	if size < 0 {
		size = s.maxBody
	}
	release, err := s.roomFor(r.Context(), id, size)
	if err != nil {
		s.refuse(w, r, err)
		return
	}
	defer release()
	// Store.Put keeps nothing of data once it returns (BlockStore), so the
	// buffer can take the next PUT.
	bp := s.buffer()
	var data []byte
	defer func() { s.recycle(bp, data) }()
	data, err = readBody(http.MaxBytesReader(w, r.Body, s.maxBody), r.ContentLength, *bp)
	if err != nil {
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			s.fail(w, r, http.StatusRequestEntityTooLarge,
				fmt.Sprintf("body exceeds the %d-byte limit", s.maxBody), nil)
			return
		}
		s.fail(w, r, http.StatusBadRequest, "read body: "+err.Error(), nil)
		return
	}
	err = s.cfg.Store.Put(r.Context(), id, data)
	switch {
	case err == nil:
		w.WriteHeader(http.StatusNoContent)
	case errors.Is(err, persist.ErrHashMismatch):
		s.fail(w, r, http.StatusBadRequest, err.Error(), nil)
	case errors.Is(err, persist.ErrTooLarge):
		s.fail(w, r, http.StatusRequestEntityTooLarge, err.Error(), nil)
	case errors.Is(err, syscall.ENOSPC):
		s.fail(w, r, http.StatusInsufficientStorage, "disk full: "+err.Error(), err)
	case clientGone(r):
	default:
		s.fail(w, r, http.StatusInternalServerError, "store block: "+err.Error(), err)
	}
}

// readBody reads a body of n bytes (n < 0: unknown) without the repeated
// growing and copying io.ReadAll does on a multi-MiB block, into buf if it
// is large enough.
func readBody(body io.Reader, n int64, buf []byte) ([]byte, error) {
	if n < 0 {
		return io.ReadAll(body)
	}
	var data []byte
	if int64(cap(buf)) >= n {
		data = buf[:n]
	} else {
		data = make([]byte, n)
	}
	if _, err := io.ReadFull(body, data); err != nil {
		return nil, err
	}
	return data, nil
}

func (s *server) getBlock(w http.ResponseWriter, r *http.Request) {
	id, ok := s.blockID(w, r)
	if !ok {
		return
	}
	var data []byte
	var err error
	if l, ok := s.cfg.Store.(blockLoader); ok {
		bp := s.buffer()
		data, err = l.Load(r.Context(), id, *bp)
		// The answer is written by the time the handler returns, so
		// the buffer can serve the next GET.
		defer func() { s.recycle(bp, data) }()
	} else {
		data, err = s.cfg.Store.Get(r.Context(), id)
	}
	switch {
	case err == nil:
	case errors.Is(err, persist.ErrNotFound):
		s.fail(w, r, http.StatusNotFound, "not found", nil)
		return
	case errors.Is(err, persist.ErrCorrupt):
		// The scrubber on this node repairs it; the reader tries another copy.
		s.fail(w, r, http.StatusConflict, "corrupt", nil)
		return
	case clientGone(r):
		return
	default:
		s.fail(w, r, http.StatusInternalServerError, "read block: "+err.Error(), err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.WriteHeader(http.StatusOK)
	w.Write(data)
}

func (s *server) headBlock(w http.ResponseWriter, r *http.Request) {
	id, ok := s.blockID(w, r)
	if !ok {
		return
	}
	has, size, err := s.cfg.Store.Has(r.Context(), id)
	switch {
	case err != nil && clientGone(r):
	case err != nil:
		s.fail(w, r, http.StatusInternalServerError, "look up block: "+err.Error(), err)
	case !has:
		w.WriteHeader(http.StatusNotFound)
	default:
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(size))
		w.WriteHeader(http.StatusOK)
	}
}

func (s *server) deleteBlock(w http.ResponseWriter, r *http.Request) {
	id, ok := s.blockID(w, r)
	if !ok {
		return
	}
	if err := s.cfg.Store.Delete(r.Context(), id); err != nil {
		if !clientGone(r) {
			s.fail(w, r, http.StatusInternalServerError, "delete block: "+err.Error(), err)
		}
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// checkBlock takes a client's report that this node served a corrupt copy
// of the block; the node verifies and replaces it (read-repair).
func (s *server) checkBlock(w http.ResponseWriter, r *http.Request) {
	id, ok := s.blockID(w, r)
	if !ok {
		return
	}
	if s.cfg.Suspect != nil {
		s.cfg.Suspect(id)
	}
	w.WriteHeader(http.StatusAccepted)
}

// touchBlock refreshes the block's last put time (see persist's Touch) for
// a client that uploaded it for a write it has not committed yet.
func (s *server) touchBlock(w http.ResponseWriter, r *http.Request) {
	id, ok := s.blockID(w, r)
	if !ok {
		return
	}
	t, ok := s.cfg.Store.(interface {
		Touch(ctx context.Context, id persist.BlockID) error
	})
	if !ok {
		s.fail(w, r, http.StatusNotImplemented, "this store keeps no put times", nil)
		return
	}
	switch err := t.Touch(r.Context(), id); {
	case err == nil:
		w.WriteHeader(http.StatusNoContent)
	case errors.Is(err, persist.ErrNotFound):
		http.Error(w, "not found", http.StatusNotFound)
	default:
		s.fail(w, r, http.StatusInternalServerError, "touch block: "+err.Error(), err)
	}
}

func (s *server) listBlocks(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	rc := http.NewResponseController(w)
	sent := &countingWriter{w: w}
	bw := bufio.NewWriterSize(sent, 64<<10)
	var line []byte
	n := 0
	err := s.cfg.Store.List(r.Context(), func(id persist.BlockID, size int) error {
		line = append(line[:0], id.String()...)
		line = append(line, ' ')
		line = strconv.AppendInt(line, int64(size), 10)
		line = append(line, '\n')
		if _, err := bw.Write(line); err != nil {
			return err
		}
		n++
		if n%listFlushEvery == 0 {
			if err := bw.Flush(); err != nil {
				return err
			}
			if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = bw.Flush()
	}
	if err == nil || clientGone(r) {
		return
	}
	if sent.n == 0 {
		// Nothing reached the connection yet: a proper status still works.
		s.fail(w, r, http.StatusInternalServerError, "list blocks: "+err.Error(), err)
		return
	}
	// Lines already went out with 200. Aborting drops the connection before
	// the terminating chunk, so the client reads an unexpected EOF instead
	// of mistaking a partial list for the whole store.
	s.cfg.Logger.Error("block API listing failed mid-stream; aborting the response",
		"remote", r.RemoteAddr, "lines", n, "err", err)
	panic(http.ErrAbortHandler)
}

// countingWriter tells listBlocks whether any byte reached the response.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func (s *server) cluster(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Cluster == nil {
		s.fail(w, r, http.StatusServiceUnavailable, "this node has no cluster view", errors.New("ServerConfig.Cluster is nil"))
		return
	}
	s.writeJSON(w, r, s.cfg.Cluster())
}

// space returns the bytes blocks may use on this node in all and the bytes
// still free for them (see ServerConfig.Capacity and Reserve), and the
// bytes of blocks stored.
func (s *server) space() (total, free uint64, used int64, err error) {
	_, used = s.cfg.Store.Stats()
	var fs syscall.Statfs_t
	if err := syscall.Statfs(s.cfg.DataDir, &fs); err != nil {
		return 0, 0, used, fmt.Errorf("statfs %s: %w", s.cfg.DataDir, err)
	}
	// Bavail, not Bfree: blocks reserved for root are not ours to fill.
	total = uint64(fs.Blocks) * uint64(fs.Bsize)
	avail := uint64(fs.Bavail) * uint64(fs.Bsize)
	reserve := s.cfg.Reserve
	if reserve == 0 {
		reserve = min(max(total/50, 64<<20), 1<<30)
	}
	free = avail - min(avail, reserve)
	if c := s.cfg.Capacity; c > 0 {
		total = min(total, uint64(c))
		free = min(free, uint64(max(c-used, 0)))
	}
	return total, free, used, nil
}

// roomFor takes room for a new block of n bytes, or refuses it when the
// node has none; release gives the room back once the block is stored (and
// counted by the store) or refused. A block the node already holds costs
// nothing.
func (s *server) roomFor(ctx context.Context, id persist.BlockID, n int64) (release func(), err error) {
	release = func() {}
	if s.cfg.DataDir == "" && s.cfg.Capacity <= 0 {
		return release, nil
	}
	if has, _, err := s.cfg.Store.Has(ctx, id); err == nil && has {
		return release, nil
	}
	s.roomMu.Lock()
	defer s.roomMu.Unlock()
	taken := s.incoming
	if _, used := s.cfg.Store.Stats(); s.cfg.Capacity > 0 && used+taken+n > s.cfg.Capacity {
		return nil, fmt.Errorf("no room for a block of %d bytes: this node's capacity is %d bytes, %d used, %d being stored", n, s.cfg.Capacity, used, taken)
	}
	if s.cfg.DataDir != "" {
		_, free, _, err := s.space()
		if err != nil {
			return nil, err
		}
		if uint64(n)+uint64(taken) > free {
			return nil, fmt.Errorf("no room for a block of %d bytes: %d bytes left for blocks on %s, %d of them being stored; the rest is kept free for metadata", n, free, s.cfg.DataDir, taken)
		}
	}
	s.incoming += n
	return func() {
		s.roomMu.Lock()
		s.incoming -= n
		s.roomMu.Unlock()
	}, nil
}

func (s *server) stats(w http.ResponseWriter, r *http.Request) {
	var st NodeStats
	st.Blocks, st.Bytes = s.cfg.Store.Stats()
	if s.cfg.DataDir != "" {
		total, free, _, err := s.space()
		if err != nil {
			s.fail(w, r, http.StatusInternalServerError, err.Error(), err)
			return
		}
		st.DiskTotal, st.DiskFree = total, free
	}
	if s.cfg.Actors != nil {
		st.Actors = s.cfg.Actors()
	}
	s.writeJSON(w, r, st)
}

func (s *server) writeJSON(w http.ResponseWriter, r *http.Request, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		err = fmt.Errorf("encode %T: %w", v, err)
		s.fail(w, r, http.StatusInternalServerError, err.Error(), err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}
