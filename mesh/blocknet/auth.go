package blocknet

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

const (
	// authHeader carries "<unix seconds>:<hex HMAC-SHA256>" on every request.
	authHeader = "X-Meshfs-Auth"
	// maxClockSkew bounds how old (or how far in the future) a signature may
	// be. The signature does not cover the body, so a captured request can be
	// replayed within this window; for PUT that is harmless (the body must
	// hash to the id anyway), and the window keeps other replays short.
	maxClockSkew = 5 * time.Minute
)

// signature is HMAC-SHA256(secret, METHOD "\n" path "\n" unix).
func signature(secret []byte, method, path string, unix int64) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(method))
	m.Write([]byte{'\n'})
	m.Write([]byte(path))
	m.Write([]byte{'\n'})
	m.Write(strconv.AppendInt(nil, unix, 10))
	return m.Sum(nil)
}

// authValue is the authHeader value for a request sent at t.
func authValue(secret []byte, method, path string, t time.Time) string {
	unix := t.Unix()
	return strconv.FormatInt(unix, 10) + ":" + hex.EncodeToString(signature(secret, method, path, unix))
}

// checkAuth verifies r's signature at time now. Its error is safe to show to
// the caller: it says what is wrong, never what the right signature is.
func checkAuth(secret []byte, r *http.Request, now time.Time) error {
	v := r.Header.Get(authHeader)
	if v == "" {
		return fmt.Errorf("missing %s header", authHeader)
	}
	tsText, macHex, ok := strings.Cut(v, ":")
	if !ok {
		return fmt.Errorf("malformed %s header: want <unix seconds>:<hex hmac>", authHeader)
	}
	ts, err := strconv.ParseInt(tsText, 10, 64)
	if err != nil {
		return fmt.Errorf("malformed %s timestamp %q", authHeader, tsText)
	}
	mac, err := hex.DecodeString(macHex)
	if err != nil {
		return fmt.Errorf("malformed %s signature: not hex", authHeader)
	}
	// Check the signature before the clock: a forger learns nothing about
	// the node's clock, and an honest peer with a skewed clock gets the
	// accurate message below.
	if !hmac.Equal(mac, signature(secret, r.Method, r.URL.Path, ts)) {
		return errors.New("bad signature (is the cluster secret the same on both sides?)")
	}
	skew := now.Sub(time.Unix(ts, 0))
	if skew > maxClockSkew || skew < -maxClockSkew {
		return fmt.Errorf("signature timestamp is %v off this node's clock (limit %v)", skew.Round(time.Second), maxClockSkew)
	}
	return nil
}
