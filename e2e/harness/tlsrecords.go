package harness

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// SelfSignedCert writes a certificate for 127.0.0.1, its own authority, and its
// key, and returns the files and a pool that trusts it.
func SelfSignedCert(t testing.TB) (cert, key string, pool *x509.CertPool) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	parsed, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(parsed)
	return cert, key, pool
}

// tlsRecordSizes reads the lengths of the TLS records in stream, a
// server's side of one connection.
func tlsRecordSizes(stream []byte) ([]int, error) {
	var sizes []int
	for len(stream) >= 5 {
		n := int(binary.BigEndian.Uint16(stream[3:5]))
		if len(stream) < 5+n {
			return sizes, fmt.Errorf("a TLS record of %d bytes is cut at %d", n, len(stream)-5)
		}
		sizes = append(sizes, n)
		stream = stream[5+n:]
	}
	return sizes, nil
}

// CheckFullTLSRecords checks that a body of size bytes, sent over HTTP/2
// on the connection whose server side is stream (FaultProxy.Sent), went
// out in full TLS records of 16 KiB. A DATA frame of the 16 KiB that curl
// (and so Nix) allows does not fit one with its 9-byte header: it goes
// out as a full record and one of a few bytes.
func CheckFullTLSRecords(stream []byte, size int) error {
	sizes, err := tlsRecordSizes(stream)
	if err != nil {
		return err
	}
	// A frame's last 9 bytes, in a record with TLS 1.3's 17 bytes of
	// type and tag.
	small, full := 0, 0
	for _, n := range sizes {
		switch {
		case n <= 9+17:
			small++
		case n >= 16<<10:
			full++
		}
	}
	if frames := size / (16 << 10); full < frames*9/10 || small > frames/10 {
		return fmt.Errorf("%d bytes over HTTP/2 went out in %d TLS records: %d full and %d of a few bytes, want about %d full ones", size, len(sizes), full, small, frames)
	}
	return nil
}
