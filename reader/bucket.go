package reader

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"

	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"
	_ "gocloud.dev/blob/gcsblob" // gs:// with Application Default Credentials
	_ "gocloud.dev/blob/memblob" // mem://
)

// OpenBucket opens the bucket a location names and returns it with the key prefix under which its objects live.
//
//	dir, ./dir, /abs/dir   a local directory (must exist), prefix ""
//	file:///abs/dir        the same as a URL (fileblob's query parameters apply), prefix ""
//	gs://bucket/a/b        a GCS bucket with default credentials, prefix "a/b/"
//	mem://name/a           a new, empty in-memory bucket (each call opens a fresh one), prefix "a/"
//
// A non-empty prefix always ends in "/": a location names a folder, never a key stem.
// The caller closes the bucket.
func OpenBucket(ctx context.Context, loc string) (b *blob.Bucket, prefix string, err error) {
	l, err := parseLocation(loc)
	if err != nil {
		return nil, "", err
	}
	if l.bucketURL == "" {
		// No ".attrs" sidecar per object: analysts list these directories, and we set no attributes
		// that a local reader needs.
		b, err = fileblob.OpenBucket(l.dir, &fileblob.Options{Metadata: fileblob.MetadataDontWrite})
	} else {
		b, err = blob.OpenBucket(ctx, l.bucketURL)
	}
	if err != nil {
		return nil, "", fmt.Errorf("open bucket %s: %w", loc, err)
	}
	return b, l.prefix, nil
}

// location is a parsed OpenBucket argument: either a local dir or a bucket URL, and a prefix.
type location struct {
	dir       string // local directory, when bucketURL is ""
	bucketURL string // URL for blob.OpenBucket
	prefix    string
}

func parseLocation(loc string) (location, error) {
	if loc == "" {
		return location{}, errors.New("open bucket: empty location")
	}
	if !strings.Contains(loc, "://") {
		return location{dir: loc}, nil
	}
	u, err := url.Parse(loc)
	if err != nil {
		return location{}, fmt.Errorf("open bucket %s: %w", loc, err)
	}
	switch scheme := strings.ToLower(u.Scheme); scheme {
	case "file":
		return location{bucketURL: loc}, nil
	case "gs", "mem":
		if scheme == "gs" && u.Host == "" {
			return location{}, fmt.Errorf("open bucket %s: no bucket name", loc)
		}
		bucketURL := scheme + "://" + u.Host
		if u.RawQuery != "" {
			bucketURL += "?" + u.RawQuery
		}
		prefix := strings.TrimPrefix(u.Path, "/")
		if prefix != "" && !strings.HasSuffix(prefix, "/") {
			prefix += "/"
		}
		return location{bucketURL: bucketURL, prefix: prefix}, nil
	default:
		return location{}, fmt.Errorf("open bucket %s: unsupported scheme %q (want a directory, file://, gs:// or mem://)", loc, u.Scheme)
	}
}

// Object is one input object: its key in the bucket and its stored size in bytes.
type Object struct {
	Key  string
	Size int64
	// Layout is how the object's lines are arranged when its producer says so (an export's own description);
	// "" when unknown, and List never sets it.
	Layout Layout
}

// List returns every object under prefix, sorted by key. It skips directories (and "dir/" placeholder objects),
// fileblob's "*.attrs" sidecars, and any key with a path segment after the prefix's last "/" that starts with "_"
// or "." (our own outputs such as _manifest.json and _rejects/, and hidden files). Names say nothing of content.
func List(ctx context.Context, b *blob.Bucket, prefix string) ([]Object, error) {
	var out []Object
	it := b.List(&blob.ListOptions{Prefix: prefix})
	for {
		o, err := it.Next(ctx)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, err)
		}
		if o.IsDir || skipKey(o.Key, prefix) {
			continue
		}
		out = append(out, Object{Key: o.Key, Size: o.Size})
	}
	slices.SortFunc(out, func(a, b Object) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// skipKey reports whether List leaves key out.
func skipKey(key, prefix string) bool {
	if strings.HasSuffix(key, "/") || strings.HasSuffix(key, ".attrs") {
		return true
	}
	rest := key[strings.LastIndex(prefix, "/")+1:]
	for seg := range strings.SplitSeq(rest, "/") {
		if strings.HasPrefix(seg, "_") || strings.HasPrefix(seg, ".") {
			return true
		}
	}
	return false
}
