package trigger_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"

	"github.com/fhirlake/fhirlake/trigger"
	"github.com/fhirlake/fhirlake/trigger/healthcaretest"
)

// Example starts a Group export organised by Patient, persists its handle, resumes from it and lists the output.
// The service is the fake; in production svc comes from healthcare.NewService with credentials, and OpenBucket is
// left zero (gcsblob).
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "trigger-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bucket, err := fileblob.OpenBucket(dir, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer bucket.Close()
	fake, err := healthcaretest.New("healthcaretest/testdata/store", healthcaretest.Options{Bucket: bucket, Polls: 2})
	if err != nil {
		log.Fatal(err)
	}
	defer fake.Close()
	svc, err := fake.Service(ctx)
	if err != nil {
		log.Fatal(err)
	}

	client := trigger.New(svc, trigger.Options{
		Deadline: 6 * time.Hour,
		Sleep:    func(context.Context, time.Duration) error { return nil }, // the example does not wait
		OpenBucket: func(ctx context.Context, name string) (*blob.Bucket, error) {
			return fileblob.OpenBucket(dir, nil)
		},
	})
	h, err := client.Start(ctx, trigger.Request{
		Kind: trigger.KindGroup, Store: fake.StoreName(), Group: "g1", ByPatient: true,
	})
	if err != nil {
		log.Fatal(err)
	}
	saved, err := json.Marshal(h) // what a job keeps to resume after a restart
	if err != nil {
		log.Fatal(err)
	}

	resumed, err := trigger.ParseHandle(saved)
	if err != nil {
		log.Fatal(err)
	}
	out, err := client.Wait(ctx, resumed)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("polls:", out.Progress.Polls, "starts:", fake.Starts())
	for _, o := range out.Objects {
		fmt.Printf("gs://%s/%s %q %s\n", out.Bucket, o.Key, o.ResourceType, o.Layout)
	}
	// Output:
	// polls: 3 starts: 1
	// gs://fake-bucket/bulk/1000001_Group.ndjson "Group" type
	// gs://fake-bucket/bulk/1000001_Patient.ndjson "" patient
}
