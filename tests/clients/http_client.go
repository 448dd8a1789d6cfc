// A Go net/http client for the end-to-end tests: waits for a line on stdin, then
// makes each request of its arguments in order on one keep-alive client, prints
// "STATUS BODYLEN" per request and "done", and stays up (connections idle) until
// stdin closes.
//
// Usage: http_client METHOD URL [BODY] ...   (triples: "-" for no body)
package main

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
)

func main() {
	in := bufio.NewReader(os.Stdin)
	fmt.Println("ready")
	if _, err := in.ReadString('\n'); err != nil {
		return
	}
	client := &http.Client{}
	args := os.Args[1:]
	for i := 0; i+2 < len(args); i += 3 {
		method, url, body := args[i], args[i+1], args[i+2]
		var reader io.Reader
		if body != "-" {
			reader = strings.NewReader(body)
		}
		req, err := http.NewRequest(method, url, reader)
		if err != nil {
			fmt.Println("error", err)
			continue
		}
		resp, err := client.Do(req)
		if err != nil {
			fmt.Println("error", err)
			continue
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode, len(data))
	}
	fmt.Println("done")
	io.Copy(io.Discard, in)
}
