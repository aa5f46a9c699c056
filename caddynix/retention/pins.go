package retention

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"strings"
	"time"

	"github.com/cargoxx-pkgs/runner/caddynix/storage"
)

// PinsDir holds the pins. Pins are part of the cache, as its files are:
// one object per pin, retention/pins/<name>, holding the pinned store
// path. So they outlive the index, and every node serving the same
// storage sees them.
const PinsDir = "retention/pins"

// Pin keeps a store path's closure whatever retention decides.
type Pin struct {
	Name      string    `json:"name"`
	StorePath string    `json:"store_path"`
	Hash      string    `json:"hash"`
	CreatedAt time.Time `json:"created_at"`
}

// pinName is what a pin may be called: what fits an object name and a
// shell word without quoting.
var pinName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// checkPinName says what is wrong with a pin name, if anything.
func checkPinName(name string) error {
	if !pinName.MatchString(name) {
		return fmt.Errorf("pin name %q is not allowed: use up to 128 letters, digits, '.', '_' and '-', starting with a letter or digit", name)
	}
	return nil
}

// ErrNoSuchPin is returned by unpin for a name no pin has.
var ErrNoSuchPin = errors.New("no pin has that name")

// Pin creates or moves the pin name to a store path the cache holds.
func (c *Collector) Pin(ctx context.Context, name, storePath string) (Pin, error) {
	if err := checkPinName(name); err != nil {
		return Pin{}, err
	}
	p, err := c.lookup(storePath)
	if err != nil {
		return Pin{}, err
	}
	if err := storage.WriteAll(ctx, c.store, path.Join(PinsDir, name), []byte(p.StorePath+"\n")); err != nil {
		return Pin{}, fmt.Errorf("writing pin %s: %w", name, err)
	}
	return Pin{Name: name, StorePath: p.StorePath, Hash: p.Hash, CreatedAt: time.Now().UTC()}, nil
}

// Unpin removes the pin name.
func (c *Collector) Unpin(ctx context.Context, name string) error {
	if err := checkPinName(name); err != nil {
		return err
	}
	object := path.Join(PinsDir, name)
	if _, err := c.store.Stat(ctx, object); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("pin %q: %w", name, ErrNoSuchPin)
	} else if err != nil {
		return err
	}
	return c.store.Delete(ctx, object)
}

// Pins lists the pins by name. A pin object that does not name a store
// path is an error: retention must not run without knowing what it keeps.
func (c *Collector) Pins(ctx context.Context) ([]Pin, error) {
	objects, err := c.store.List(ctx, PinsDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("listing the pins: %w", err)
	}
	pins := []Pin{}
	for _, o := range objects {
		name := path.Base(o.Name)
		if checkPinName(name) != nil {
			continue
		}
		data, err := storage.ReadAll(ctx, c.store, o.Name, 4096)
		if err != nil {
			return nil, fmt.Errorf("reading pin %s: %w", name, err)
		}
		storePath := strings.TrimSpace(string(data))
		hash, err := hashOfStorePath(c.storeDir, storePath)
		if err != nil || !strings.HasPrefix(storePath, c.storeDir+"/") {
			return nil, fmt.Errorf("pin %s (%s) does not hold a store path of %s: remove it with `caddy nix-cache pin rm %s`", name, o.Name, c.storeDir, name)
		}
		pins = append(pins, Pin{Name: name, StorePath: storePath, Hash: hash, CreatedAt: o.ModTime})
	}
	return pins, nil
}
