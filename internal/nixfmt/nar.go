package nixfmt

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Limits on the strings of a NAR; Nix would fail to unpack anything
// longer.
const (
	maxNameLen   = 255  // NAME_MAX
	maxTargetLen = 4095 // PATH_MAX less the terminating NUL
	maxTokenLen  = 16   // the longest keyword, "nix-archive-1", and then some
	maxNarDepth  = 2048 // a path of one-letter names fills PATH_MAX
)

// CheckNar reads a whole NAR from r and returns what is wrong with it, as
// Nix's parser (parseDump in archive.cc) would find when unpacking it: a
// NAR cut short, a malformed or unknown token, non-zero padding, an entry
// name that is empty, ".", "..", or holds '/' or NUL, directory entries
// out of order or repeated, or anything after the end of the NAR. File
// contents are read and dropped, so memory stays flat whatever the size.
//
// go-nix's nar.Reader is not used here: it takes a NAR cut short at a
// token boundary for a whole one, and cannot see "." or "" entry names.
func CheckNar(r io.Reader) error {
	p := &narParser{r: bufio.NewReaderSize(r, 64<<10)}
	if err := p.expect("nix-archive-1"); err != nil {
		return fmt.Errorf("not a NAR: %w", err)
	}
	if err := p.node("", 0); err != nil {
		return err
	}
	if _, err := p.r.ReadByte(); err == nil {
		return errors.New("data follows the end of the NAR")
	} else if !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

type narParser struct {
	r *bufio.Reader
}

// node parses `( type … )` at path.
func (p *narParser) node(path string, depth int) error {
	if depth > maxNarDepth {
		return fmt.Errorf("%s: directories nested deeper than %d", displayPath(path), maxNarDepth)
	}
	if err := p.expect("("); err != nil {
		return fmt.Errorf("%s: %w", displayPath(path), err)
	}
	if err := p.expect("type"); err != nil {
		return fmt.Errorf("%s: %w", displayPath(path), err)
	}
	kind, err := p.str(maxTokenLen)
	if err != nil {
		return fmt.Errorf("%s: %w", displayPath(path), err)
	}
	switch kind {
	case "regular":
		err = p.regular()
	case "symlink":
		err = p.symlink()
	case "directory":
		return p.directory(path, depth)
	default:
		err = fmt.Errorf("unknown file type %q", kind)
	}
	if err == nil {
		err = p.expect(")")
	}
	if err != nil {
		return fmt.Errorf("%s: %w", displayPath(path), err)
	}
	return nil
}

func (p *narParser) regular() error {
	token, err := p.str(maxTokenLen)
	if err != nil {
		return err
	}
	if token == "executable" {
		if err := p.expect(""); err != nil {
			return err
		}
		if token, err = p.str(maxTokenLen); err != nil {
			return err
		}
	}
	if token != "contents" {
		return fmt.Errorf("expected %q, found %q", "contents", token)
	}
	size, err := p.u64()
	if err != nil {
		return err
	}
	if size > 1<<62 {
		return fmt.Errorf("file size %d is impossible", size)
	}
	if _, err := io.CopyN(io.Discard, p.r, int64(size)); err != nil {
		return noEOF(err)
	}
	return p.padding(size)
}

func (p *narParser) symlink() error {
	if err := p.expect("target"); err != nil {
		return err
	}
	target, err := p.str(maxTargetLen)
	if err != nil {
		return err
	}
	if target == "" || strings.IndexByte(target, 0) >= 0 {
		return fmt.Errorf("symlink target %q is empty or holds a NUL byte", target)
	}
	return nil
}

func (p *narParser) directory(path string, depth int) error {
	previous := ""
	for first := true; ; first = false {
		token, err := p.str(maxTokenLen)
		if err != nil {
			return fmt.Errorf("%s: %w", displayPath(path), err)
		}
		if token == ")" {
			return nil
		}
		if token != "entry" {
			return fmt.Errorf("%s: expected %q or %q, found %q", displayPath(path), "entry", ")", token)
		}
		if err := p.expect("("); err != nil {
			return fmt.Errorf("%s: %w", displayPath(path), err)
		}
		if err := p.expect("name"); err != nil {
			return fmt.Errorf("%s: %w", displayPath(path), err)
		}
		name, err := p.str(maxNameLen)
		if err != nil {
			return fmt.Errorf("%s: %w", displayPath(path), err)
		}
		if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
			return fmt.Errorf("%s: invalid entry name %q", displayPath(path), name)
		}
		if !first && name <= previous {
			return fmt.Errorf("%s: entry %q comes after %q: entries must be sorted and unique", displayPath(path), name, previous)
		}
		previous = name
		if err := p.expect("node"); err != nil {
			return fmt.Errorf("%s: %w", displayPath(path+"/"+name), err)
		}
		if err := p.node(path+"/"+name, depth+1); err != nil {
			return err
		}
		if err := p.expect(")"); err != nil {
			return fmt.Errorf("%s: %w", displayPath(path+"/"+name), err)
		}
	}
}

// str reads a length-prefixed, zero-padded string of at most max bytes.
func (p *narParser) str(max int) (string, error) {
	n, err := p.u64()
	if err != nil {
		return "", err
	}
	if n > uint64(max) {
		return "", fmt.Errorf("a string of %d bytes where at most %d belong", n, max)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(p.r, buf); err != nil {
		return "", noEOF(err)
	}
	return string(buf), p.padding(n)
}

func (p *narParser) expect(want string) error {
	got, err := p.str(max(len(want), maxTokenLen))
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("expected %q, found %q", want, got)
	}
	return nil
}

func (p *narParser) u64() (uint64, error) {
	var buf [8]byte
	if _, err := io.ReadFull(p.r, buf[:]); err != nil {
		return 0, noEOF(err)
	}
	return binary.LittleEndian.Uint64(buf[:]), nil
}

var zeroPadding [8]byte

// padding reads the zero bytes that fill a string of n bytes to 8.
func (p *narParser) padding(n uint64) error {
	pad := (8 - n%8) % 8
	if pad == 0 {
		return nil
	}
	var buf [8]byte
	if _, err := io.ReadFull(p.r, buf[:pad]); err != nil {
		return noEOF(err)
	}
	if !bytes.Equal(buf[:pad], zeroPadding[:pad]) {
		return errors.New("non-zero padding")
	}
	return nil
}

// noEOF reports an end of input inside the NAR as the truncation it is.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("the NAR is cut short: %w", io.ErrUnexpectedEOF)
	}
	return err
}

func displayPath(path string) string {
	if path == "" {
		return "/"
	}
	return path
}
