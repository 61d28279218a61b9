package blocknet

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meshfs/meshfs/persist"
)

const (
	// defaultClientTimeout applies when NewClient is given no timeout: every
	// network call has a bound, so a dead peer cannot hang a caller.
	defaultClientTimeout = 30 * time.Second
	// maxErrorBody is how much of an error answer is kept for the message.
	maxErrorBody = 512
	// maxJSONBody bounds /v1/cluster and /v1/stats answers.
	maxJSONBody = 16 << 20
	// drainLimit is how much of an unread body is drained so the connection
	// can be reused; past it, closing the connection is cheaper.
	drainLimit = 256 << 10
)

// Client talks to single nodes, addressed by their block API host:port.
// Its errors wrap persist.ErrNotFound, persist.ErrCorrupt and
// persist.ErrHashMismatch where the node answered so.
type Client struct {
	secret  []byte
	timeout time.Duration
	hc      *http.Client // shared by every call, so connections are reused
}

// NewClient returns a client that signs requests with secret and gives each
// request at most timeout (streaming bodies included) unless ctx ends sooner.
// A timeout ≤ 0 means 30 s.
func NewClient(secret []byte, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = defaultClientTimeout
	}
	tr := &http.Transport{
		// No Proxy: block traffic stays inside the mesh, whatever
		// HTTP_PROXY says for the rest of the machine.
		DialContext: (&net.Dialer{
			Timeout:   min(timeout, 10*time.Second),
			KeepAlive: 30 * time.Second,
		}).DialContext,
		// A replicator writes many blocks to the same few nodes at once;
		// the default of 2 idle connections per host would make most of
		// them redial.
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		// Blocks are mostly incompressible and hashed end to end; gzip
		// would only cost CPU.
		DisableCompression: true,
		// Plain HTTP/1.1 (a custom DialContext already turns HTTP/2 off):
		// one block per connection at a time streams at full speed
		// without HTTP/2's flow-control windows.
		ForceAttemptHTTP2: false,
		WriteBufferSize:   128 << 10,
		ReadBufferSize:    128 << 10,
	}
	return &Client{
		secret:  bytes.Clone(secret),
		timeout: timeout,
		hc:      &http.Client{Transport: tr},
	}
}

// closeIdle drops idle connections (tests use it to leave no goroutines).
func (c *Client) closeIdle() { c.hc.CloseIdleConnections() }

// url accepts a bare host:port (what Member.HTTP holds) or a base URL.
func (c *Client) url(addr, path string) string {
	if strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://") {
		return strings.TrimSuffix(addr, "/") + path
	}
	return "http://" + addr + path
}

func blockPath(id persist.BlockID) string { return "/v1/blocks/" + id.String() }

// call is one signed request in flight. done must be called once the body
// has been read (or not): it drains for connection reuse, closes the body
// and releases the request's timeout.
type call struct {
	resp   *http.Response
	cancel context.CancelFunc
}

func (cl *call) done() {
	io.Copy(io.Discard, io.LimitReader(cl.resp.Body, drainLimit))
	cl.resp.Body.Close()
	cl.cancel()
}

// send signs and sends one request, bounded by c.timeout.
func (c *Client) send(ctx context.Context, method, addr, path string, body []byte) (*call, error) {
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url(addr, path), rd)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header.Set(authHeader, authValue(c.secret, method, req.URL.Path, time.Now()))
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		cancel()
		return nil, c.transportError(parent, err)
	}
	return &call{resp: resp, cancel: cancel}, nil
}

// transportError drops url.Error's repetition of method and URL (the caller
// names the operation and node) and says when it was our own timeout.
func (c *Client) transportError(parent context.Context, err error) error {
	if ue := (*url.Error)(nil); errors.As(err, &ue) {
		err = ue.Err
	}
	if errors.Is(err, context.DeadlineExceeded) && parent.Err() == nil {
		return fmt.Errorf("no answer within %v: %w", c.timeout, err)
	}
	return err
}

// readErr is transportError for failures while reading a body.
func (c *Client) readErr(parent context.Context, err error) error {
	return fmt.Errorf("read answer: %w", c.transportError(parent, err))
}

// statusError is a node's non-success answer. It wraps the persist sentinel
// (or syscall.ENOSPC) the status stands for, so callers can branch on it.
type statusError struct {
	code int
	msg  string // the node's explanation, trimmed
	err  error  // what the status means, or nil
}

func (e *statusError) Error() string {
	s := "HTTP " + strconv.Itoa(e.code) + " " + http.StatusText(e.code)
	if e.msg != "" {
		s += ": " + e.msg
	}
	if e.err != nil {
		return e.err.Error() + " (" + s + ")"
	}
	return s
}

func (e *statusError) Unwrap() error { return e.err }

// errDiskFull is what 507 means.
var errDiskFull = fmt.Errorf("node's disk full: %w", syscall.ENOSPC)

// errUnauthorized is what 401 means.
var errUnauthorized = errors.New("request refused: cluster secret or clock differs from the node's")

// newStatusError reads what the node said and maps its status. 400 only
// means a hash mismatch for a PUT; elsewhere it is a malformed request.
func newStatusError(resp *http.Response, put bool) error {
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &statusError{code: resp.StatusCode, msg: strings.TrimSpace(string(msg))}
	switch resp.StatusCode {
	case http.StatusNotFound:
		e.err = persist.ErrNotFound
	case http.StatusConflict:
		e.err = persist.ErrCorrupt
	case http.StatusBadRequest:
		if put {
			e.err = persist.ErrHashMismatch
		}
	case http.StatusRequestEntityTooLarge:
		e.err = persist.ErrTooLarge
	case http.StatusInsufficientStorage:
		e.err = errDiskFull
	case http.StatusUnauthorized:
		e.err = errUnauthorized
	}
	return e
}

// readBlock reads a block body, refusing one larger than any block can be.
func readBlock(resp *http.Response) ([]byte, error) {
	n := resp.ContentLength
	if n > maxBlockBody {
		return nil, fmt.Errorf("answer of %d bytes exceeds the %d-byte limit", n, maxBlockBody)
	}
	if n >= 0 {
		data := make([]byte, n)
		if _, err := io.ReadFull(resp.Body, data); err != nil {
			return nil, err
		}
		return data, nil
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBlockBody+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxBlockBody {
		return nil, fmt.Errorf("answer exceeds the %d-byte limit", maxBlockBody)
	}
	return data, nil
}

// Put stores data under id on the node at addr.
func (c *Client) Put(ctx context.Context, addr string, id persist.BlockID, data []byte) error {
	if data == nil {
		data = []byte{} // an empty block still has a (zero-length) body
	}
	cl, err := c.send(ctx, http.MethodPut, addr, blockPath(id), data)
	if err != nil {
		return fmt.Errorf("put block %s to %s: %w", id, addr, err)
	}
	defer cl.done()
	if cl.resp.StatusCode/100 != 2 {
		return fmt.Errorf("put block %s to %s: %w", id, addr, newStatusError(cl.resp, true))
	}
	return nil
}

// Get fetches a block and verifies its hash (ErrCorrupt on mismatch).
func (c *Client) Get(ctx context.Context, addr string, id persist.BlockID) ([]byte, error) {
	cl, err := c.send(ctx, http.MethodGet, addr, blockPath(id), nil)
	if err != nil {
		return nil, fmt.Errorf("get block %s from %s: %w", id, addr, err)
	}
	defer cl.done()
	if cl.resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("get block %s from %s: %w", id, addr, newStatusError(cl.resp, false))
	}
	data, err := readBlock(cl.resp)
	if err != nil {
		return nil, fmt.Errorf("get block %s from %s: %w", id, addr, c.readErr(ctx, err))
	}
	// The node's store verified it, but the node may be buggy or the bytes
	// may have been damaged since; the name is the only thing we trust.
	if got := persist.Sum(data); got != id {
		return nil, fmt.Errorf("get block %s from %s: %w: received %d bytes hashing to %s",
			id, addr, persist.ErrCorrupt, len(data), got)
	}
	return data, nil
}

// Has reports whether the node at addr holds the block.
func (c *Client) Has(ctx context.Context, addr string, id persist.BlockID) (bool, error) {
	cl, err := c.send(ctx, http.MethodHead, addr, blockPath(id), nil)
	if err != nil {
		return false, fmt.Errorf("look up block %s on %s: %w", id, addr, err)
	}
	defer cl.done()
	switch cl.resp.StatusCode {
	case http.StatusOK:
		return true, nil
	case http.StatusNotFound:
		return false, nil
	default:
		return false, fmt.Errorf("look up block %s on %s: %w", id, addr, newStatusError(cl.resp, false))
	}
}

// Delete removes the block from the node at addr; a missing block is fine.
func (c *Client) Delete(ctx context.Context, addr string, id persist.BlockID) error {
	cl, err := c.send(ctx, http.MethodDelete, addr, blockPath(id), nil)
	if err != nil {
		return fmt.Errorf("delete block %s on %s: %w", id, addr, err)
	}
	defer cl.done()
	if cl.resp.StatusCode/100 != 2 {
		return fmt.Errorf("delete block %s on %s: %w", id, addr, newStatusError(cl.resp, false))
	}
	return nil
}

// Report tells the node at addr that the copy of the block it served was
// corrupt, so it verifies and replaces it (read-repair).
func (c *Client) Report(ctx context.Context, addr string, id persist.BlockID) error {
	cl, err := c.send(ctx, http.MethodPost, addr, blockPath(id)+"/check", nil)
	if err != nil {
		return fmt.Errorf("report corrupt block %s to %s: %w", id, addr, err)
	}
	defer cl.done()
	if cl.resp.StatusCode/100 != 2 {
		return fmt.Errorf("report corrupt block %s to %s: %w", id, addr, newStatusError(cl.resp, false))
	}
	return nil
}

// Touch refreshes the block's last put time on the node at addr; it wraps
// persist.ErrNotFound when the node has no copy.
func (c *Client) Touch(ctx context.Context, addr string, id persist.BlockID) error {
	cl, err := c.send(ctx, http.MethodPost, addr, blockPath(id)+"/touch", nil)
	if err != nil {
		return fmt.Errorf("touch block %s on %s: %w", id, addr, err)
	}
	defer cl.done()
	if cl.resp.StatusCode/100 != 2 {
		return fmt.Errorf("touch block %s on %s: %w", id, addr, newStatusError(cl.resp, false))
	}
	return nil
}

// List calls fn for every block the node at addr holds, stopping at fn's
// first error, which it returns as is. The whole listing must arrive within
// the client timeout.
func (c *Client) List(ctx context.Context, addr string, fn func(id persist.BlockID, size int) error) error {
	cl, err := c.send(ctx, http.MethodGet, addr, "/v1/blocks", nil)
	if err != nil {
		return fmt.Errorf("list blocks on %s: %w", addr, err)
	}
	defer cl.done()
	if cl.resp.StatusCode != http.StatusOK {
		return fmt.Errorf("list blocks on %s: %w", addr, newStatusError(cl.resp, false))
	}
	sc := bufio.NewScanner(cl.resp.Body)
	for sc.Scan() {
		idText, sizeText, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			return fmt.Errorf("list blocks on %s: malformed line %q", addr, sc.Text())
		}
		id, err := persist.ParseBlockID(idText)
		if err != nil {
			return fmt.Errorf("list blocks on %s: %w", addr, err)
		}
		size, err := strconv.Atoi(sizeText)
		if err != nil || size < 0 {
			return fmt.Errorf("list blocks on %s: malformed size in line %q", addr, sc.Text())
		}
		if err := fn(id, size); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		// A node that fails mid-listing cuts the stream: this is how a
		// partial list is told apart from a complete one.
		return fmt.Errorf("list blocks on %s: %w", addr, c.readErr(ctx, err))
	}
	return nil
}

// getJSON fetches path from addr and decodes it into v.
func (c *Client) getJSON(ctx context.Context, addr, path string, v any) error {
	cl, err := c.send(ctx, http.MethodGet, addr, path, nil)
	if err != nil {
		return err
	}
	defer cl.done()
	if cl.resp.StatusCode != http.StatusOK {
		return newStatusError(cl.resp, false)
	}
	body, err := io.ReadAll(io.LimitReader(cl.resp.Body, maxJSONBody))
	if err != nil {
		return c.readErr(ctx, err)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	return nil
}

// Cluster asks the node at addr for its view of the mesh.
func (c *Client) Cluster(ctx context.Context, addr string) (ClusterInfo, error) {
	var info ClusterInfo
	if err := c.getJSON(ctx, addr, "/v1/cluster", &info); err != nil {
		return ClusterInfo{}, fmt.Errorf("get cluster info from %s: %w", addr, err)
	}
	return info, nil
}

// Stats asks the node at addr for its storage use.
func (c *Client) Stats(ctx context.Context, addr string) (NodeStats, error) {
	var st NodeStats
	if err := c.getJSON(ctx, addr, "/v1/stats", &st); err != nil {
		return NodeStats{}, fmt.Errorf("get stats from %s: %w", addr, err)
	}
	return st, nil
}
