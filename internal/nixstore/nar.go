package nixstore

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
)

// A tree is where a NAR's files are read from: the host's file system,
// with absolute names, or an *os.Root, whose names stay inside it
// whatever symlinks the tree holds.
type tree interface {
	Lstat(name string) (fs.FileInfo, error)
	Readlink(name string) (string, error)
	OpenFile(name string, flag int, perm fs.FileMode) (*os.File, error)
}

// hostTree is the host's file system.
type hostTree struct{}

func (hostTree) Lstat(name string) (fs.FileInfo, error) { return os.Lstat(name) }
func (hostTree) Readlink(name string) (string, error)   { return os.Readlink(name) }
func (hostTree) OpenFile(name string, flag int, perm fs.FileMode) (*os.File, error) {
	return os.OpenFile(name, flag, perm)
}

// openRead opens name in files to read. A FIFO put where a file was
// (the tree changed under the walk) fails the NAR rather than blocking
// it: the open does not wait for a writer, and the read finds no
// regular file.
func openRead(files tree, name string) (*os.File, error) {
	return files.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
}

// readBufferSize is how much of a file is read at a time: files up to
// this size in one read, larger ones in chunks of it.
const readBufferSize = 256 << 10

var readBuffers = sync.Pool{New: func() any { b := make([]byte, readBufferSize); return &b }}

// WriteNar writes the NAR of the file tree at fsPath to w, byte for byte
// what `nix-store --dump` writes: directory entries in byte order, a
// regular file executable when its owner may execute it, symlinks as
// their targets. It returns the NAR's size. A tree that changes while it
// is read (a path garbage collected mid-way) is an error, never a NAR of
// something else: files are read to exactly the size found when each was
// opened.
//
// go-nix's nar.Writer is not used: it passes every write through a
// goroutine and cannot tell offsets, which listings need.
func WriteNar(w io.Writer, fsPath string) (int64, error) {
	bufp := readBuffers.Get().(*[]byte)
	defer readBuffers.Put(bufp)
	n := &narWalker{files: hostTree{}, out: w, buf: *bufp}
	if err := n.archive(fsPath); err != nil {
		return n.offset, err
	}
	err := n.str(")")
	return n.offset, err
}

// WriteListing writes the JSON listing of the file tree at fsPath to w,
// in the shape Nix writes to <hash>.ls with write-nar-listing: every
// regular file with its size, whether it is executable, and the offset of
// its contents in the uncompressed NAR. It is written while the tree is
// walked, so memory stays flat however many files the tree has.
func WriteListing(w io.Writer, fsPath string) error {
	n := &narWalker{files: hostTree{}, listing: w}
	if _, err := io.WriteString(w, `{"version":1,"root":`); err != nil {
		return err
	}
	if err := n.archive(fsPath); err != nil {
		return err
	}
	_, err := io.WriteString(w, "}")
	return err
}

// narWalker walks a file tree in NAR order. With out, it writes the NAR
// there; with listing, it writes the tree's JSON listing there. Either
// way it counts the NAR's bytes, which is all a listing needs of the
// contents.
type narWalker struct {
	files   tree
	out     io.Writer
	listing io.Writer
	buf     []byte
	// sendfile hands file contents to out's ReadFrom, if it has one,
	// which for a network connection is sendfile(2).
	sendfile bool
	offset   int64
	scratch  [8]byte
}

// archive writes the NAR of the tree at fsPath but for its last string,
// the root node's closing ")".
func (n *narWalker) archive(fsPath string) error {
	if err := n.str("nix-archive-1"); err != nil {
		return err
	}
	info, err := n.files.Lstat(fsPath)
	if err != nil {
		return fmt.Errorf("reading the store path: %w", err)
	}
	return n.node(fsPath, info)
}

// node writes `( type …` for the file at fsPath: all of its node but the
// closing ")", which its caller writes.
func (n *narWalker) node(fsPath string, info fs.FileInfo) error {
	if err := n.strs("(", "type"); err != nil {
		return err
	}
	switch mode := info.Mode(); {
	case mode.IsRegular():
		return n.regular(fsPath, mode&0o100 != 0)
	case mode&fs.ModeSymlink != 0:
		target, err := n.files.Readlink(fsPath)
		if err != nil {
			return fmt.Errorf("reading symlink %s: %w", fsPath, err)
		}
		if err := n.listJSON(`{"type":"symlink","target":`, target, "}"); err != nil {
			return err
		}
		return n.strs("symlink", "target", target)
	case mode.IsDir():
		return n.directory(fsPath)
	default:
		return fmt.Errorf("%s is a %v, which a NAR cannot hold", fsPath, mode.Type())
	}
}

func (n *narWalker) regular(fsPath string, executable bool) error {
	if err := n.str("regular"); err != nil {
		return err
	}
	if executable {
		if err := n.strs("executable", ""); err != nil {
			return err
		}
	}
	if err := n.str("contents"); err != nil {
		return err
	}
	var size int64
	if n.out == nil {
		info, err := n.files.Lstat(fsPath)
		if err != nil {
			return fmt.Errorf("reading %s: %w", fsPath, err)
		}
		size = info.Size()
		n.offset += 8 + size + padding(size)
	} else {
		f, err := openRead(n.files, fsPath)
		if err != nil {
			return fmt.Errorf("reading %s: %w", fsPath, err)
		}
		defer func() { _ = f.Close() }()
		info, err := f.Stat()
		if err == nil && !info.Mode().IsRegular() {
			err = fmt.Errorf("it is no longer a regular file")
		}
		if err != nil {
			return fmt.Errorf("reading %s: %w", fsPath, err)
		}
		size = info.Size()
		if err := n.contents(f, fsPath, size); err != nil {
			return err
		}
	}
	if n.listing != nil {
		// narOffset is where the contents start: after their length.
		start := n.offset - padding(size) - size
		exe := ""
		if executable {
			exe = `,"executable":true`
		}
		if _, err := fmt.Fprintf(n.listing, `{"type":"regular","size":%d%s,"narOffset":%d}`, size, exe, start); err != nil {
			return err
		}
	}
	return nil
}

// contents writes a file's length, its size bytes and the padding.
func (n *narWalker) contents(f *os.File, fsPath string, size int64) error {
	if err := n.u64(uint64(size)); err != nil {
		return err
	}
	if rf, ok := n.out.(io.ReaderFrom); ok && n.sendfile && size > 0 {
		sent, err := rf.ReadFrom(f)
		n.offset += sent
		if err == nil && sent != size {
			err = fmt.Errorf("%d bytes where it had %d when opened (it changed while being read)", sent, size)
		}
		if err != nil {
			return fmt.Errorf("sending %s: %w", fsPath, err)
		}
		return n.pad(size)
	}
	for left := size; left > 0; {
		chunk := n.buf[:min(left, int64(len(n.buf)))]
		if _, err := io.ReadFull(f, chunk); err != nil {
			return fmt.Errorf("reading %s: %w (it changed while being read)", fsPath, err)
		}
		if err := n.write(chunk); err != nil {
			return err
		}
		left -= int64(len(chunk))
	}
	return n.pad(size)
}

func (n *narWalker) directory(fsPath string) error {
	if err := n.str("directory"); err != nil {
		return err
	}
	names, err := n.readDir(fsPath)
	if err != nil {
		return fmt.Errorf("reading directory %s: %w", fsPath, err)
	}
	if err := n.listJSON(`{"type":"directory","entries":{`); err != nil {
		return err
	}
	for i, name := range names {
		info, err := n.files.Lstat(filepath.Join(fsPath, name))
		if err != nil {
			return fmt.Errorf("reading %s: %w", filepath.Join(fsPath, name), err)
		}
		sep := ","
		if i == 0 {
			sep = ""
		}
		if err := n.listJSON(sep, name, ":"); err != nil {
			return err
		}
		if err := n.strs("entry", "(", "name", name, "node"); err != nil {
			return err
		}
		if err := n.node(filepath.Join(fsPath, name), info); err != nil {
			return err
		}
		// The node's end, then the entry's.
		if err := n.strs(")", ")"); err != nil {
			return err
		}
	}
	return n.listJSON("}}")
}

// readDir returns the names in the directory fsPath sorted byte by byte,
// as Nix sorts them.
func (n *narWalker) readDir(fsPath string) ([]string, error) {
	dir, err := openRead(n.files, fsPath)
	if err != nil {
		return nil, err
	}
	defer func() { _ = dir.Close() }()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(names, strings.Compare)
	return names, nil
}

// listJSON writes parts to the listing, if there is one: the first and
// every other part verbatim, the parts between them as JSON strings.
func (n *narWalker) listJSON(parts ...string) error {
	if n.listing == nil {
		return nil
	}
	for i, part := range parts {
		if i%2 == 1 {
			quoted, err := json.Marshal(part)
			if err != nil {
				return err
			}
			part = string(quoted)
		}
		if _, err := io.WriteString(n.listing, part); err != nil {
			return err
		}
	}
	return nil
}

// strs writes each of ss as a NAR string.
func (n *narWalker) strs(ss ...string) error {
	for _, s := range ss {
		if err := n.str(s); err != nil {
			return err
		}
	}
	return nil
}

// str writes a NAR string: its length, its bytes and zero padding to a
// multiple of eight.
func (n *narWalker) str(s string) error {
	if err := n.u64(uint64(len(s))); err != nil {
		return err
	}
	if n.out != nil {
		if _, err := io.WriteString(n.out, s); err != nil {
			return err
		}
	}
	n.offset += int64(len(s))
	return n.pad(int64(len(s)))
}

func (n *narWalker) u64(v uint64) error {
	binary.LittleEndian.PutUint64(n.scratch[:], v)
	return n.write(n.scratch[:])
}

func (n *narWalker) pad(size int64) error {
	clear(n.scratch[:])
	return n.write(n.scratch[:padding(size)])
}

func (n *narWalker) write(p []byte) error {
	if n.out != nil {
		if _, err := n.out.Write(p); err != nil {
			return err
		}
	}
	n.offset += int64(len(p))
	return nil
}

// padding is how many zero bytes follow size bytes in a NAR.
func padding(size int64) int64 { return (8 - size%8) % 8 }
