// goblog: a small HTTPS blog server like the Kubernetes guide's example, for the tests.
// Standard library only; builds with Go 1.19 and later (no method or wildcard patterns).
//
// Usage: goblog [-listen ADDR] [-cert FILE] [-key FILE] [-backend URL]
// Each flag defaults to an environment variable: LISTEN_ADDR (else 127.0.0.1:8443),
// TLS_CERT, TLS_KEY (PEM files), BACKEND (the base URL of a second, plain http service).
//
//	/             200, a small HTML page
//	/posts/N      200, text "post N" (N a non-negative integer; anything else 404)
//	/missing      404
//	/api/backend  an outgoing GET to BACKEND + "/plain" (or + the path in ?path=): the
//	              upstream's status and body
//	/slow         200 after 50 ms
//
// Prints "ready" on stdout once listening, then serves forever. HTTP/2 is negotiated
// (ALPN "h2") with clients that offer it, as net/http does by default over TLS.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

const index = `<!DOCTYPE html>
<html><head><title>goblog</title></head>
<body><h1>goblog</h1><ul><li><a href="/posts/1">post 1</a></li></ul></body></html>
`

func main() {
	listen := flag.String("listen", env("LISTEN_ADDR", "127.0.0.1:8443"), "listen address")
	certFile := flag.String("cert", env("TLS_CERT", ""), "certificate file (PEM)")
	keyFile := flag.String("key", env("TLS_KEY", ""), "private key file (PEM)")
	backend := flag.String("backend", env("BACKEND", ""), "base URL of the backend service")
	flag.Parse()

	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatalf("goblog: certificate: %v", err)
	}
	client := &http.Client{Timeout: 10 * time.Second}

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, index)
	})
	mux.HandleFunc("/posts/", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/posts/"))
		if err != nil || id < 0 {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "post %d", id)
	})
	mux.HandleFunc("/missing", func(w http.ResponseWriter, r *http.Request) {
		http.NotFound(w, r)
	})
	mux.HandleFunc("/api/backend", func(w http.ResponseWriter, r *http.Request) {
		if *backend == "" {
			http.Error(w, "no backend configured", http.StatusServiceUnavailable)
			return
		}
		path := r.URL.Query().Get("path")
		if !strings.HasPrefix(path, "/") {
			path = "/plain"
		}
		resp, err := client.Get(strings.TrimRight(*backend, "/") + path)
		if err != nil {
			http.Error(w, "backend: "+err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			http.Error(w, "backend: "+err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(resp.StatusCode)
		w.Write(body)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(50 * time.Millisecond)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "slow\n")
	})

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("goblog: listen: %v", err)
	}
	server := &http.Server{
		Handler:           mux,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}},
		ReadHeaderTimeout: 10 * time.Second,
	}
	fmt.Println("ready")
	// Certificates are in TLSConfig; ServeTLS adds "h2" to its NextProtos.
	log.Fatal(server.ServeTLS(ln, "", ""))
}
