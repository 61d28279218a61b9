package meta

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const (
	defaultBucket    = "meshfs_meta"
	defaultOpTimeout = 5 * time.Second
)

func openStore(ctx context.Context, nc *nats.Conn, opts Options) (*Store, error) {
	if opts.Bucket == "" {
		opts.Bucket = defaultBucket
	}
	if opts.Replicas <= 0 {
		opts.Replicas = 1
	}
	if opts.OpTimeout <= 0 {
		opts.OpTimeout = defaultOpTimeout
	}
	if opts.BlockSize <= 0 {
		return nil, fmt.Errorf("open metadata bucket %q: block size %d", opts.Bucket, opts.BlockSize)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.OpTimeout)
		defer cancel()
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("open metadata bucket %q: %w", opts.Bucket, err)
	}
	kv, err := bindBucket(ctx, js, opts)
	if err != nil {
		return nil, fmt.Errorf("open metadata bucket %q: %w", opts.Bucket, err)
	}
	stream := "KV_" + opts.Bucket
	s := &Store{
		nc:         nc,
		kv:         kv,
		opts:       opts,
		subjPrefix: "$KV." + opts.Bucket + ".",
		stream:     stream,
		origin:     randomID()[:16],
		msgGetSubj: "$JS.API.STREAM.MSG.GET." + stream,
		// A few tries fit in one operation; a leader change takes well
		// under a second.
		attemptTimeout: min(max(opts.OpTimeout/4, 250*time.Millisecond), 2*time.Second),
		maxBatch:       defaultMaxBatchSize,
		locks:          newInoLocks(),
	}
	if opts.MustExist {
		if _, err := s.GetAttr(ctx, RootIno); err != nil {
			return nil, fmt.Errorf("open metadata bucket %q: root directory: %w (%w)", opts.Bucket, err, ErrNoFileSystem)
		}
		return s, nil
	}
	if err := s.ensureRoot(ctx); err != nil {
		return nil, fmt.Errorf("open metadata bucket %q: %w", opts.Bucket, err)
	}
	return s, nil
}

// bindBucket binds to the bucket, creating it if needed, and makes sure its
// stream takes atomic batches.
func bindBucket(ctx context.Context, js jetstream.JetStream, opts Options) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, opts.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) && opts.MustExist {
		return nil, fmt.Errorf("bind: %w", ErrNoFileSystem)
	}
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		cfg := jetstream.KeyValueConfig{
			Bucket:   opts.Bucket,
			History:  1,
			Replicas: opts.Replicas,
			Storage:  jetstream.FileStorage,
		}
		if len(opts.PlacementTags) > 0 {
			cfg.Placement = &jetstream.Placement{Tags: opts.PlacementTags}
		}
		kv, err = js.CreateKeyValue(ctx, cfg)
		if err != nil {
			// Another store may have created it (and changed its stream
			// config, so ours no longer matches) in the meantime.
			var err2 error
			if kv, err2 = js.KeyValue(ctx, opts.Bucket); err2 != nil {
				return nil, fmt.Errorf("create: %w", err)
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("bind: %w", err)
	}
	name := "KV_" + opts.Bucket
	st, err := js.Stream(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("stream %s info: %w", name, err)
	}
	if !info.Config.AllowAtomicPublish {
		cfg := info.Config
		cfg.AllowAtomicPublish = true
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			return nil, fmt.Errorf("allow atomic publish on stream %s: %w", name, err)
		}
	}
	return kv, nil
}

// ensureRoot creates the root directory if it does not exist.
func (s *Store) ensureRoot(ctx context.Context) error {
	err := s.run(ctx, func(t *tx) error {
		e, err := t.inode(RootIno)
		if err != nil || e.inode != nil {
			return err
		}
		now := time.Now().UnixNano()
		e.inode = &inodeRec{
			Ino: RootIno, Mode: syscall.S_IFDIR | 0o755, Nlink: 2,
			Atime: now, Mtime: now, Ctime: now, Parent: RootIno,
		}
		t.put(e)
		return nil
	})
	if err != nil {
		return fmt.Errorf("create root directory: %w", err)
	}
	return nil
}
