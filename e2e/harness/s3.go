package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3 is a real S3 server on loopback: versitygw with its POSIX backend,
// built by `make versitygw` into $VERSITYGW_BIN.
type S3 struct {
	t testing.TB
	// Endpoint is its URL, e.g. http://127.0.0.1:40123.
	Endpoint             string
	AccessKey, SecretKey string
	// Dir holds the buckets (Dir/root) and their metadata (Dir/meta).
	Dir  string
	proc *Process
}

// StartS3 starts an S3 server that stops when the test ends.
func StartS3(t testing.TB) *S3 {
	t.Helper()
	skipShort(t)
	bin := os.Getenv("VERSITYGW_BIN")
	if bin == "" {
		Missing(t, "the S3 server versitygw", errors.New("VERSITYGW_BIN is not set (make test sets it)"))
	}
	if _, err := os.Stat(bin); err != nil {
		Missing(t, "the S3 server versitygw (make versitygw builds it)", err)
	}
	dir := t.TempDir()
	for _, sub := range []string{"root", "meta"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	port := FreePort(t)
	s := &S3{t: t, Endpoint: fmt.Sprintf("http://127.0.0.1:%d", port), AccessKey: "e2e-access", SecretKey: "e2e-secret-key", Dir: dir}
	// Metadata in files beside the buckets, so that no extended attributes
	// are needed; with them, versitygw keeps ETags, and so conditional
	// writes and multipart uploads work. Connections are kept open between
	// requests, as S3 servers keep them (versitygw closes each after one
	// request unless told).
	cmd := exec.Command(bin, "--port", fmt.Sprintf("127.0.0.1:%d", port), "--keep-alive", "posix", "--sidecar", filepath.Join(dir, "meta"), filepath.Join(dir, "root"))
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey)
	proc, err := StartProcess("versitygw", cmd, filepath.Join(dir, "versitygw.log"))
	if err != nil {
		t.Fatal(err)
	}
	s.proc = proc
	t.Cleanup(func() {
		proc.Stop(10 * time.Second)
		if t.Failed() {
			data, _ := os.ReadFile(filepath.Join(dir, "versitygw.log"))
			t.Logf("versitygw log:\n%s", data)
		}
	})
	err = Eventually(30*time.Second, 100*time.Millisecond, func() error {
		if err := proc.Exited(); err != nil {
			return err
		}
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			return err
		}
		return conn.Close()
	})
	if err != nil {
		data, _ := os.ReadFile(filepath.Join(dir, "versitygw.log"))
		t.Fatalf("versitygw did not start: %v\n%s", err, data)
	}
	return s
}

// Kill ends the server at once, as a crash or a lost network would.
func (s *S3) Kill() { s.proc.Kill() }

// PID is the server's process id.
func (s *S3) PID() int { return s.proc.PID() }

// Client is an S3 client of the server, for a test's own checks.
func (s *S3) Client() *minio.Client {
	s.t.Helper()
	u := s.Endpoint[len("http://"):]
	client, err := minio.New(u, &minio.Options{
		Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""), Region: "us-east-1", BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		s.t.Fatal(err)
	}
	return client
}

// CreateBucket makes a bucket.
func (s *S3) CreateBucket(name string) {
	s.t.Helper()
	if err := s.Client().MakeBucket(context.Background(), name, minio.MakeBucketOptions{}); err != nil {
		s.t.Fatalf("creating bucket %s: %v", name, err)
	}
}

// UnfinishedUploads counts the multipart uploads of bucket that were
// started and neither completed nor aborted.
func (s *S3) UnfinishedUploads(bucket string) int {
	s.t.Helper()
	n := 0
	for up := range s.Client().ListIncompleteUploads(context.Background(), bucket, "", true) {
		if up.Err != nil {
			s.t.Fatal(up.Err)
		}
		n++
	}
	return n
}

// AllowAnonymous lets requests without a signature read the objects of
// bucket, and with write also list it and store objects in it.
func (s *S3) AllowAnonymous(bucket string, write bool) {
	s.t.Helper()
	actions, resources := []string{"s3:GetObject"}, []string{"arn:aws:s3:::" + bucket + "/*"}
	if write {
		actions = append(actions, "s3:PutObject", "s3:ListBucket", "s3:GetBucketLocation")
		resources = append([]string{"arn:aws:s3:::" + bucket}, resources...)
	}
	policy, err := json.Marshal(map[string]any{
		"Version":   "2012-10-17",
		"Statement": []map[string]any{{"Effect": "Allow", "Principal": "*", "Action": actions, "Resource": resources}},
	})
	if err != nil {
		s.t.Fatal(err)
	}
	if err := s.Client().SetBucketPolicy(context.Background(), bucket, string(policy)); err != nil {
		s.t.Fatalf("letting anyone at bucket %s: %v", bucket, err)
	}
}

// StorageBlock is the `storage s3` block of a nix_cache for bucket and
// prefix on this server.
func (s *S3) StorageBlock(bucket, prefix string) string {
	block := fmt.Sprintf("storage s3 {\n\tbucket %s\n\tendpoint %s\n\tpath_style\n\taccess_key_id %s\n\tsecret_access_key %s\n", bucket, s.Endpoint, s.AccessKey, s.SecretKey)
	if prefix != "" {
		block += "\tprefix " + prefix + "\n"
	}
	return block + "}"
}
