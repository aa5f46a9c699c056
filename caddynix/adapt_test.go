package caddynix

import (
	"testing"

	"github.com/cargoxx-pkgs/runner/internal/adapttest"
)

func TestCaddyfileAdaptSnapshots(t *testing.T) {
	adapttest.Run(t, "testdata")
}
