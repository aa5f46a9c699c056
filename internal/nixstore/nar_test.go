package nixstore

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cargoxx-pkgs/runner/internal/nixfmt"
	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"golang.org/x/sys/unix"
)

// storeTree makes a store path's worth of files: nested directories, an
// empty one, an empty file, an executable, symlinks (one dangling), a file
// larger than the read buffer and names that sort differently as bytes
// than as text.
func storeTree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "abcd-tree")
	big := make([]byte, readBufferSize*2+13)
	_, _ = rand.Read(big)
	files := map[string]string{
		"bin/tool":             "#!/bin/sh\necho hi\n",
		"share/doc/README":     "hello\n",
		"share/empty-file":     "",
		"share/Zebra":          "upper case sorts first\n",
		"share/a.b":            "dot",
		"share/a-b":            "dash",
		"share/seven-bytes":    "1234567",
		"share/eight-bytes":    "12345678",
		"lib/libbig.so":        string(big),
		"lib/deep/er/and/deep": "x",
	}
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o444)
		if strings.HasPrefix(name, "bin/") {
			mode = 0o555
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	for _, dir := range []string{"empty-dir", "share/empty-dir"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{"bin/alias": "tool", "lib/dangling": "/nix/store/nothing-here", "share/up": "../bin"} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestWriteNarIsTheNarNixWrites(t *testing.T) {
	root := storeTree(t)
	var ours, theirs bytes.Buffer
	size, err := WriteNar(&ours, root)
	if err != nil {
		t.Fatal(err)
	}
	if size != int64(ours.Len()) {
		t.Errorf("WriteNar says %d bytes, wrote %d", size, ours.Len())
	}
	// go-nix's dumper is a second, independent writer of the same format.
	if err := nar.DumpPath(&theirs, root); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ours.Bytes(), theirs.Bytes()) {
		t.Fatalf("NAR differs from go-nix's DumpPath (%d against %d bytes)", ours.Len(), theirs.Len())
	}
	if err := nixfmt.CheckNar(bytes.NewReader(ours.Bytes())); err != nil {
		t.Fatalf("NAR does not unpack as Nix would: %v", err)
	}
	// The executable bit is the owner's, as Nix has it.
	if !bytes.Contains(ours.Bytes(), narString("executable")) {
		t.Error("bin/tool is not marked executable")
	}
}

func TestWriteNarOfASingleFileAndASymlink(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("content"), 0o444); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink("/nix/store/aaaa-target", link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{file, link} {
		var ours, theirs bytes.Buffer
		if _, err := WriteNar(&ours, p); err != nil {
			t.Fatal(err)
		}
		if err := nar.DumpPath(&theirs, p); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ours.Bytes(), theirs.Bytes()) {
			t.Errorf("NAR of %s differs from go-nix's DumpPath", filepath.Base(p))
		}
	}
}

func TestWriteNarRefusesWhatANarCannotHold(t *testing.T) {
	root := t.TempDir()
	if err := os.Symlink("x", filepath.Join(root, "ok")); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(root, "fifo")
	if err := unix.Mkfifo(sock, 0o644); err != nil {
		t.Fatalf("making a FIFO in a temporary directory: %v", err)
	}
	if _, err := WriteNar(new(bytes.Buffer), root); err == nil || !strings.Contains(err.Error(), "cannot hold") {
		t.Fatalf("a FIFO in the tree: err = %v, want a refusal", err)
	}
	if _, err := WriteNar(new(bytes.Buffer), filepath.Join(root, "gone")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a missing path: err = %v, want not exist", err)
	}
}

// listingNode is a node of a Nix listing as a client reads it.
type listingNode struct {
	Type       string                  `json:"type"`
	Size       *int64                  `json:"size"`
	Executable bool                    `json:"executable"`
	NarOffset  int64                   `json:"narOffset"`
	Target     string                  `json:"target"`
	Entries    map[string]*listingNode `json:"entries"`
}

func TestWriteListingPointsIntoTheNar(t *testing.T) {
	root := storeTree(t)
	var narBytes, listing bytes.Buffer
	if _, err := WriteNar(&narBytes, root); err != nil {
		t.Fatal(err)
	}
	if err := WriteListing(&listing, root); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Version int          `json:"version"`
		Root    *listingNode `json:"root"`
	}
	if err := json.Unmarshal(listing.Bytes(), &doc); err != nil {
		t.Fatalf("listing is not JSON: %v\n%s", err, listing.String())
	}
	if doc.Version != 1 || doc.Root == nil || doc.Root.Type != "directory" {
		t.Fatalf("listing head: %+v", doc)
	}
	files := 0
	var visit func(rel string, n *listingNode)
	visit = func(rel string, n *listingNode) {
		switch n.Type {
		case "directory":
			if n.Entries == nil {
				t.Errorf("%s: directory without entries", rel)
			}
			for name, child := range n.Entries {
				visit(rel+"/"+name, child)
			}
		case "symlink":
			target, err := os.Readlink(root + rel)
			if err != nil || target != n.Target {
				t.Errorf("%s: target %q, on disk %q (%v)", rel, n.Target, target, err)
			}
		case "regular":
			files++
			want, err := os.ReadFile(root + rel)
			if err != nil {
				t.Fatal(err)
			}
			if n.Size == nil || *n.Size != int64(len(want)) {
				t.Errorf("%s: size %v, on disk %d", rel, n.Size, len(want))
				return
			}
			if n.Executable != strings.HasPrefix(rel, "/bin/") {
				t.Errorf("%s: executable %v", rel, n.Executable)
			}
			// The offset is where the contents start; the 8 bytes before
			// them are their length.
			at := n.NarOffset
			if at < 8 || at+*n.Size > int64(narBytes.Len()) {
				t.Fatalf("%s: narOffset %d outside the NAR", rel, at)
			}
			if got := binary.LittleEndian.Uint64(narBytes.Bytes()[at-8:]); got != uint64(len(want)) {
				t.Errorf("%s: length before narOffset is %d, want %d", rel, got, len(want))
			}
			if !bytes.Equal(narBytes.Bytes()[at:at+*n.Size], want) {
				t.Errorf("%s: bytes at narOffset are not the file's", rel)
			}
		default:
			t.Errorf("%s: type %q", rel, n.Type)
		}
	}
	visit("", doc.Root)
	if files != 10 {
		t.Errorf("listing has %d regular files, the tree 10", files)
	}
}

func TestWriteCheckedNar(t *testing.T) {
	root := storeTree(t)
	info, plain := registered(t, root)

	var got bytes.Buffer
	if err := WriteCheckedNar(&got, root, info); err != nil {
		t.Fatalf("matching registration: %v", err)
	}
	if !bytes.Equal(got.Bytes(), plain.Bytes()) {
		t.Fatal("checked NAR differs from the plain one")
	}

	// The files no longer make the registered NAR: the output stops
	// before the NAR's end, so no client can take it for a whole one.
	if err := os.WriteFile(filepath.Join(root, "share/seven-bytes"), []byte("7654321"), 0o644); err != nil {
		t.Fatal(err)
	}
	got.Reset()
	err := WriteCheckedNar(&got, root, info)
	if !errors.Is(err, ErrChanged) {
		t.Fatalf("changed contents: err = %v, want ErrChanged", err)
	}
	if got.Len() != plain.Len()-len(narEnd) {
		t.Errorf("changed contents: %d bytes written, want %d (all but the end)", got.Len(), plain.Len()-len(narEnd))
	}
	if nixfmt.CheckNar(bytes.NewReader(got.Bytes())) == nil {
		t.Error("what was written of a changed path reads as a whole NAR")
	}

	// A file added makes the NAR longer than registered: refused before
	// more than the registered size is written.
	if err := os.WriteFile(filepath.Join(root, "share/new"), []byte("more"), 0o644); err != nil {
		t.Fatal(err)
	}
	got.Reset()
	if err := WriteCheckedNar(&got, root, info); !errors.Is(err, ErrChanged) {
		t.Fatalf("grown tree: err = %v, want ErrChanged", err)
	}
	if got.Len() > plain.Len()-len(narEnd) {
		t.Errorf("grown tree: %d bytes written, more than %d", got.Len(), plain.Len()-len(narEnd))
	}

	// A path collected before it is read.
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	if err := WriteCheckedNar(new(bytes.Buffer), root, info); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("collected path: err = %v, want not exist", err)
	}
}

func narString(s string) []byte {
	var b bytes.Buffer
	_ = binary.Write(&b, binary.LittleEndian, uint64(len(s)))
	b.WriteString(s)
	b.Write(make([]byte, padding(int64(len(s)))))
	return b.Bytes()
}

// fileReceiver records whether file contents came through ReadFrom, as
// a connection's sendfile takes them.
type fileReceiver struct {
	bytes.Buffer
	files int
}

func (f *fileReceiver) ReadFrom(r io.Reader) (int64, error) {
	if _, ok := r.(*os.File); ok {
		f.files++
	}
	return f.Buffer.ReadFrom(r)
}

func TestWriteKnownNarHandsFilesOn(t *testing.T) {
	root := storeTree(t)
	info, plain := registered(t, root)
	var got fileReceiver
	if err := WriteKnownNar(&got, root, info); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), plain.Bytes()) {
		t.Fatal("known NAR differs from the plain one")
	}
	if got.files != 9 { // every regular file but the empty one
		t.Errorf("%d files handed to ReadFrom, want 9", got.files)
	}

	// A file grown since: the size no longer matches, and the end is
	// never written.
	if err := os.WriteFile(filepath.Join(root, "share/seven-bytes"), []byte("123456789"), 0o644); err != nil {
		t.Fatal(err)
	}
	got = fileReceiver{}
	if err := WriteKnownNar(&got, root, info); !errors.Is(err, ErrChanged) {
		t.Fatalf("grown file: err = %v, want ErrChanged", err)
	}
	if bytes.HasSuffix(got.Bytes(), narEnd) && got.Len() >= plain.Len() {
		t.Error("a NAR of changed files was written to its end")
	}
}

// registered is what a database would record of the tree at root: its
// NAR's hash and size. It returns the NAR too.
func registered(t *testing.T, root string) (*PathInfo, *bytes.Buffer) {
	t.Helper()
	var nar bytes.Buffer
	if _, err := WriteNar(&nar, root); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(nar.Bytes())
	return &PathInfo{
		NarHash: nixhash.MustNewHashWithEncoding(nixhash.SHA256, sum[:], nixhash.NixBase32, true),
		NarSize: uint64(nar.Len()),
	}, &nar
}

// TestWriteCheckedNarInStaysInItsRoot: read through an *os.Root, a store
// path makes the same NAR as through the host's file system, and a store
// whose directories are symlinks out of its root is refused rather than
// followed.
func TestWriteCheckedNarInStaysInItsRoot(t *testing.T) {
	tree := storeTree(t)
	info, plain := registered(t, tree)
	rootDir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(rootDir, "nix", "store"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tree, filepath.Join(rootDir, "nix", "store", "abcd-tree")); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(rootDir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = root.Close() }()
	var got bytes.Buffer
	if err := WriteCheckedNarIn(&got, root, "nix/store/abcd-tree", info); err != nil {
		t.Fatalf("reading through the root: %v", err)
	}
	if !bytes.Equal(got.Bytes(), plain.Bytes()) {
		t.Fatal("the NAR read through the root differs from the one read directly")
	}

	// The store's nix directory made a symlink to a copy of the tree
	// outside the root: the host's file system follows it, the root
	// does not.
	outside := t.TempDir()
	if err := os.Rename(filepath.Join(rootDir, "nix"), filepath.Join(outside, "nix")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "nix"), filepath.Join(rootDir, "nix")); err != nil {
		t.Fatal(err)
	}
	if err := WriteCheckedNar(new(bytes.Buffer), filepath.Join(rootDir, "nix/store/abcd-tree"), info); err != nil {
		t.Fatalf("the host's file system no longer follows the symlink: %v", err)
	}
	got.Reset()
	if err := WriteCheckedNarIn(&got, root, "nix/store/abcd-tree", info); err == nil {
		t.Fatal("a store path behind a symlink out of the root was read")
	}
	if got.Len() > len(narString("nix-archive-1")) {
		t.Errorf("%d bytes of a tree outside the root were written", got.Len())
	}
}
