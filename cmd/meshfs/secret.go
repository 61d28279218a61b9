package main

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/meshfs/meshfs/mesh"
)

// clusterSecret is the cluster secret (see mesh.Secret for its keys).
type clusterSecret = mesh.Secret

// loadSecret reads the secret from --secret-file or $MESHFS_SECRET.
func loadSecret(file string) (clusterSecret, error) {
	var raw string
	switch {
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("read cluster secret: %w", err)
		}
		raw = string(b)
	case os.Getenv("MESHFS_SECRET") != "":
		raw = os.Getenv("MESHFS_SECRET")
	default:
		return nil, usagef("no cluster secret: pass --secret-file FILE or set MESHFS_SECRET (make one with 'meshfs secret > FILE')")
	}
	raw = strings.TrimSpace(raw)
	if len(raw) < 16 {
		return nil, usagef("cluster secret is %d characters; want at least 16 (make one with 'meshfs secret')", len(raw))
	}
	return clusterSecret(raw), nil
}

func newSecret() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func runSecret(w io.Writer) error {
	_, err := fmt.Fprintln(w, newSecret())
	return err
}
