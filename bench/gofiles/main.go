// Command gofiles serves a directory over HTTPS with net/http's own file
// server and HTTP/2, with nothing of Caddy's: what Go's HTTP/2 server
// itself does for static files. BenchmarkNixSubstitutesHTTPS runs it
// beside nix_cache, Caddy's file_server and nginx.
//
// Usage: gofiles -listen 127.0.0.1:PORT -root DIR -cert FILE -key FILE
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on")
	root := flag.String("root", "", "the directory to serve")
	cert := flag.String("cert", "", "the certificate file (PEM)")
	key := flag.String("key", "", "the certificate's key file (PEM)")
	flag.Parse()
	if *root == "" || *cert == "" || *key == "" {
		fmt.Fprintln(os.Stderr, "gofiles: -root, -cert and -key are required")
		os.Exit(2)
	}
	// HTTP/2 is on by default for a server with TLS.
	err := http.ListenAndServeTLS(*listen, *cert, *key, http.FileServer(http.Dir(*root)))
	fmt.Fprintln(os.Stderr, "gofiles:", err)
	os.Exit(1)
}
