package trigger

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"github.com/fhirlake/fhirlake/trigger/internal/fhirtypes"
)

// discover lists what a finished export produced.
func (c *Client) discover(ctx context.Context, h Handle, st status) (*Output, error) {
	if h.Kind == KindStore {
		return c.discoverStore(ctx, h, st)
	}
	return c.discoverBulk(ctx, h, st.manifest)
}

// discoverStore lists the objects under the destination: the operation's response names none.
func (c *Client) discoverStore(ctx context.Context, h Handle, st status) (*Output, error) {
	name, prefix, err := parseGS(h.Destination)
	if err != nil {
		return nil, err
	}
	b, err := c.opts.OpenBucket(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", name, err)
	}
	defer b.Close()
	out := &Output{Bucket: name, TransactionTime: st.createTime}
	it := b.List(&blob.ListOptions{Prefix: prefix})
	for {
		obj, err := it.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("list gs://%s/%s: %w", name, prefix, err)
		}
		base := path.Base(obj.Key)
		if obj.IsDir || strings.HasSuffix(obj.Key, "/") || strings.HasPrefix(base, "_") || strings.HasPrefix(base, ".") {
			continue
		}
		out.Objects = append(out.Objects, Object{Key: obj.Key, Size: obj.Size, ResourceType: typeFromName(base), Layout: LayoutType})
	}
	sortObjects(out.Objects)
	return out, nil
}

// discoverBulk takes the objects from the manifest and checks each exists, through the bucket.
func (c *Client) discoverBulk(ctx context.Context, h Handle, m *manifest) (*Output, error) {
	if m == nil {
		return nil, fmt.Errorf("%s export %s finished without a manifest", h.Kind, h.Operation)
	}
	out := &Output{}
	if m.TransactionTime == "" {
		return nil, fmt.Errorf("%s export %s: manifest has no transactionTime", h.Kind, h.Operation)
	}
	tt, err := time.Parse(time.RFC3339Nano, m.TransactionTime)
	if err != nil {
		return nil, fmt.Errorf("%s export %s: manifest transactionTime: %w", h.Kind, h.Operation, err)
	}
	out.TransactionTime = tt

	var bucket *blob.Bucket
	defer func() {
		if bucket != nil {
			bucket.Close()
		}
	}()
	// object checks one manifest entry: it must be in the one bucket all entries share.
	object := func(e manifestEntry) (Object, error) {
		name, key, err := parseGSObject(e.URL)
		if err != nil {
			return Object{}, fmt.Errorf("%s export %s manifest: %w", h.Kind, h.Operation, err)
		}
		if bucket == nil {
			out.Bucket = name
			if bucket, err = c.opts.OpenBucket(ctx, name); err != nil {
				return Object{}, fmt.Errorf("open bucket %s: %w", name, err)
			}
		} else if name != out.Bucket {
			return Object{}, fmt.Errorf("%s export %s manifest names two buckets, %s and %s", h.Kind, h.Operation, out.Bucket, name)
		}
		o := Object{Key: key, Layout: LayoutType, Size: -1}
		if fhirtypes.Known(e.Type) {
			o.ResourceType = e.Type
		}
		if h.ByPatient && e.Type == "Patient" {
			o.ResourceType, o.Layout = "", LayoutPatient
		}
		attrs, err := bucket.Attributes(ctx, key)
		switch {
		case err == nil:
			o.Size = attrs.Size
		case gcerrors.Code(err) == gcerrors.NotFound:
			return o, fmt.Errorf("%s export %s manifest lists gs://%s/%s, which does not exist: %w", h.Kind, h.Operation, name, key, err)
		default:
			return o, fmt.Errorf("stat gs://%s/%s: %w", name, key, err)
		}
		return o, nil
	}
	for _, e := range m.Output {
		o, err := object(e)
		if err != nil {
			return nil, err
		}
		out.Objects = append(out.Objects, o)
	}
	for _, e := range m.Error {
		o, err := object(e)
		if err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			return nil, err
		}
		// An error file that cannot be found is still reported (Size -1): the entry is never dropped.
		out.Errors = append(out.Errors, o)
	}
	sortObjects(out.Objects)
	sortObjects(out.Errors)
	return out, nil
}

func sortObjects(objs []Object) {
	sort.Slice(objs, func(i, j int) bool { return objs[i].Key < objs[j].Key })
}

// typeFromName finds the resource type an object name declares, in the shapes exports use: "Patient",
// "Patient.ndjson", "{export_id}_Patient.ndjson", with optional .gz; "" when it declares none.
func typeFromName(base string) string {
	name := strings.TrimSuffix(base, ".gz")
	name = strings.TrimSuffix(name, ".ndjson")
	if fhirtypes.Known(name) {
		return name
	}
	if i := strings.LastIndexByte(name, '_'); i >= 0 && fhirtypes.Known(name[i+1:]) {
		return name[i+1:]
	}
	return ""
}
