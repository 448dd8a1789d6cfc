// gotls: HTTP/1.1 spoken by hand over Go's crypto/tls, without net/http, for the tests:
// the spans of such a program come from crypto/tls's plaintext, not from net/http.
//
// Usage:
//
//	gotls server ADDR CERT KEY   serves "GET /..." with 200 "ok\n" on keep-alive connections;
//	                             prints "ready" once listening
//	gotls client ADDR PATH...    waits for a line on stdin, GETs each PATH on one TLS
//	                             connection, prints "STATUS BODYLEN" per request and "done",
//	                             then waits for stdin to close
package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strconv"
	"strings"
)

func serve(conn net.Conn) {
	defer conn.Close()
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		for { // headers
			h, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if h == "\r\n" {
				break
			}
		}
		status, body := "200 OK", "ok\n"
		if strings.Contains(line, "/missing") {
			status, body = "404 Not Found", "not found\n"
		}
		fmt.Fprintf(conn, "HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s", status, len(body), body)
	}
}

func server(addr, certFile, keyFile string) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		log.Fatal(err)
	}
	ln, err := tls.Listen("tcp", addr, &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("ready")
	for {
		conn, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go serve(conn)
	}
}

func client(addr string, paths []string) {
	in := bufio.NewReader(os.Stdin)
	fmt.Println("ready")
	in.ReadString('\n')
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		log.Fatal(err)
	}
	r := bufio.NewReader(conn)
	for _, path := range paths {
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, addr)
		status, _ := r.ReadString('\n')
		length := 0
		for {
			h, _ := r.ReadString('\n')
			if h == "\r\n" || h == "" {
				break
			}
			if strings.HasPrefix(strings.ToLower(h), "content-length:") {
				length, _ = strconv.Atoi(strings.TrimSpace(h[len("content-length:"):]))
			}
		}
		body := make([]byte, length)
		io.ReadFull(r, body)
		fmt.Println(strings.Fields(status)[1], len(body))
	}
	fmt.Println("done")
	io.Copy(io.Discard, in)
	conn.Close()
}

func main() {
	if len(os.Args) >= 5 && os.Args[1] == "server" {
		server(os.Args[2], os.Args[3], os.Args[4])
	} else if len(os.Args) >= 3 && os.Args[1] == "client" {
		client(os.Args[2], os.Args[3:])
	} else {
		log.Fatal("usage: gotls server ADDR CERT KEY | gotls client ADDR PATH...")
	}
}
