package index

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Pin keeps a store path's closure whatever retention decides.
type Pin struct {
	Name      string    `json:"-"`
	StorePath string    `json:"store_path"`
	Hash      string    `json:"hash"`
	CreatedAt time.Time `json:"created_at"`
}

// pinName is what a pin may be called: what fits a URL path segment and a
// shell word without quoting.
var pinName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// CheckPinName says what is wrong with a pin name, if anything.
func CheckPinName(name string) error {
	if !pinName.MatchString(name) {
		return fmt.Errorf("pin name %q is not allowed: use up to 128 letters, digits, '.', '_' and '-', starting with a letter or digit", name)
	}
	return nil
}

// ErrNoSuchPin is returned by Unpin for a name no pin has.
var ErrNoSuchPin = errors.New("no pin has that name")

// SetPin creates or moves the pin name to the path.
func (x *Index) SetPin(pin Pin) error {
	if err := CheckPinName(pin.Name); err != nil {
		return err
	}
	return x.db.Update(func(tx *bolt.Tx) error {
		return putJSON(tx.Bucket(pinsBucket), pin.Name, pin)
	})
}

// Unpin removes the pin name.
func (x *Index) Unpin(name string) error {
	return x.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(pinsBucket)
		if b.Get([]byte(name)) == nil {
			return fmt.Errorf("pin %q: %w", name, ErrNoSuchPin)
		}
		return b.Delete([]byte(name))
	})
}

// Pins lists the pins by name.
func (x *Index) Pins() ([]Pin, error) {
	var pins []Pin
	err := x.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(pinsBucket).ForEach(func(k, v []byte) error {
			var pin Pin
			if err := json.Unmarshal(v, &pin); err != nil {
				return fmt.Errorf("pin %s: %w", k, err)
			}
			pin.Name = string(k)
			pins = append(pins, pin)
			return nil
		})
	})
	sort.Slice(pins, func(i, j int) bool { return pins[i].Name < pins[j].Name })
	return pins, err
}
