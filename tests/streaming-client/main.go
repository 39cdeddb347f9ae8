// streaming-client speaks the Kubernetes streaming protocols as client-go's executors do (the
// code behind `crictl exec`, `crictl attach`, `crictl port-forward` and the kubelet's proxy),
// built on the same libraries: moby/spdystream for SPDY/3.1 and gorilla/websocket. husk's tests
// run it against the URLs its CRI Exec, Attach and PortForward return.
//
// It copies its stdin to the remote process (-stdin), the remote output to its stdout and
// stderr, and exits with the remote exit code; a failure status exits 100 with its message on
// stderr. Port forwarding (-mode portforward) sends its stdin to the pod's -port and prints
// what comes back.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/moby/spdystream"
)

type status struct {
	Status  string `json:"status"`
	Message string `json:"message"`
	Reason  string `json:"reason"`
	Details struct {
		Causes []struct {
			Reason  string `json:"reason"`
			Message string `json:"message"`
		} `json:"causes"`
	} `json:"details"`
}

var (
	transport = flag.String("transport", "spdy", "spdy or websocket")
	mode      = flag.String("mode", "exec", "exec, attach or portforward")
	target    = flag.String("url", "", "the URL the CRI returned")
	stdin     = flag.Bool("stdin", false, "send stdin")
	stdout    = flag.Bool("stdout", true, "receive stdout")
	stderr    = flag.Bool("stderr", false, "receive stderr")
	tty       = flag.Bool("tty", false, "a terminal (sends one resize)")
	cols      = flag.Int("cols", 0, "terminal width to send")
	rows      = flag.Int("rows", 0, "terminal height to send")
	port      = flag.Int("port", 0, "portforward: the pod's port")
	protocols = flag.String("protocols", "", "comma-separated protocols to offer (default: as client-go)")
	hangup    = flag.Duration("hangup", 0, "drop the connection after this long instead of waiting")
	until     = flag.String("until", "", "drop the connection once stdout shows this text")
)

// output is stdout, watched for -until.
type output struct {
	mu   sync.Mutex
	seen []byte
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	os.Stdout.Write(p)
	o.seen = append(o.seen, p...)
	if *until != "" && strings.Contains(string(o.seen), *until) {
		os.Exit(0)
	}
	return len(p), nil
}

var stdoutW = &output{}

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "streaming-client: "+format+"\n", a...)
	os.Exit(101)
}

// exitWith turns the final status into the process' exit code, as client-go does.
func exitWith(raw []byte) {
	if len(raw) == 0 {
		fail("no status on the error stream")
	}
	var s status
	if err := json.Unmarshal(raw, &s); err != nil {
		fail("status %q: %v", raw, err)
	}
	if s.Status == "Success" {
		os.Exit(0)
	}
	if s.Reason == "NonZeroExitCode" {
		for _, c := range s.Details.Causes {
			if c.Reason == "ExitCode" {
				code, err := strconv.Atoi(c.Message)
				if err != nil {
					fail("exit code %q", c.Message)
				}
				os.Exit(code)
			}
		}
	}
	fmt.Fprintf(os.Stderr, "%s\n", s.Message)
	os.Exit(100)
}

func offered(def ...string) []string {
	if *protocols != "" {
		return strings.Split(*protocols, ",")
	}
	return def
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func dialSPDY(u *url.URL, protos []string) (*spdystream.Connection, string) {
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		fail("dial: %v", err)
	}
	req, _ := http.NewRequest("POST", u.String(), nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	for _, p := range protos {
		req.Header.Add("X-Stream-Protocol-Version", p)
	}
	if err := req.Write(conn); err != nil {
		fail("request: %v", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		fail("response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(resp.Body)
		fmt.Fprintf(os.Stderr, "%d %s", resp.StatusCode, body)
		os.Exit(102)
	}
	sc, err := spdystream.NewConnection(bufConn{conn, br}, false)
	if err != nil {
		fail("spdy: %v", err)
	}
	go sc.Serve(spdystream.NoOpStreamHandler)
	return sc, resp.Header.Get("X-Stream-Protocol-Version")
}

func open(sc *spdystream.Connection, h http.Header) *spdystream.Stream {
	s, err := sc.CreateStream(h, nil, false)
	if err != nil {
		fail("create stream %v: %v", h, err)
	}
	if err := s.WaitTimeout(30 * time.Second); err != nil {
		fail("stream %v not answered: %v", h, err)
	}
	return s
}

func streamOf(kind string) http.Header {
	h := http.Header{}
	h.Set("streamType", kind)
	return h
}

func spdyExec(u *url.URL) {
	sc, proto := dialSPDY(u, offered("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"))
	defer sc.Close()
	if proto != "v4.channel.k8s.io" && proto != "v5.channel.k8s.io" {
		fail("negotiated %q", proto)
	}
	errStream := open(sc, streamOf("error"))
	var wg sync.WaitGroup
	if *stdin {
		in := open(sc, streamOf("stdin"))
		go func() {
			io.Copy(in, os.Stdin)
			in.Close()
		}()
	}
	if *stdout {
		out := open(sc, streamOf("stdout"))
		wg.Add(1)
		go func() { defer wg.Done(); io.Copy(stdoutW, out) }()
	}
	if *stderr {
		e := open(sc, streamOf("stderr"))
		wg.Add(1)
		go func() { defer wg.Done(); io.Copy(os.Stderr, e) }()
	}
	if *tty {
		r := open(sc, streamOf("resize"))
		if *cols > 0 {
			json.NewEncoder(r).Encode(map[string]int{"Width": *cols, "Height": *rows})
		}
	}
	if *hangup > 0 {
		time.Sleep(*hangup)
		os.Exit(0)
	}
	raw, _ := io.ReadAll(errStream)
	wg.Wait()
	exitWith(raw)
}

func wsExec(u *url.URL) {
	u.Scheme = "ws"
	d := websocket.Dialer{Subprotocols: offered("v5.channel.k8s.io", "v4.channel.k8s.io")}
	c, resp, err := d.Dial(u.String(), nil)
	if err != nil {
		if resp != nil {
			body, _ := io.ReadAll(resp.Body)
			fmt.Fprintf(os.Stderr, "%d %s", resp.StatusCode, body)
			os.Exit(102)
		}
		fail("dial: %v", err)
	}
	defer c.Close()
	v5 := c.Subprotocol() == "v5.channel.k8s.io"
	var mu sync.Mutex
	send := func(ch byte, data []byte) {
		mu.Lock()
		defer mu.Unlock()
		c.WriteMessage(websocket.BinaryMessage, append([]byte{ch}, data...))
	}
	if *tty && *cols > 0 {
		b, _ := json.Marshal(map[string]int{"Width": *cols, "Height": *rows})
		send(4, b)
	}
	if *stdin {
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := os.Stdin.Read(buf)
				if n > 0 {
					send(0, buf[:n])
				}
				if err != nil {
					break
				}
			}
			if v5 {
				send(255, []byte{0})
			}
		}()
	}
	if *hangup > 0 {
		time.Sleep(*hangup)
		os.Exit(0)
	}
	var final []byte
	for {
		_, m, err := c.ReadMessage()
		if err != nil {
			break
		}
		if len(m) == 0 {
			continue
		}
		switch m[0] {
		case 1:
			stdoutW.Write(m[1:])
		case 2:
			os.Stderr.Write(m[1:])
		case 3:
			final = append(final, m[1:]...)
		}
	}
	exitWith(final)
}

func spdyPortForward(u *url.URL) {
	sc, proto := dialSPDY(u, offered("portforward.k8s.io"))
	defer sc.Close()
	if proto != "portforward.k8s.io" {
		fail("negotiated %q", proto)
	}
	h := http.Header{}
	h.Set("streamType", "error")
	h.Set("port", strconv.Itoa(*port))
	h.Set("requestID", "0")
	errStream := open(sc, h)
	errStream.Close()
	h.Set("streamType", "data")
	data := open(sc, h)
	go func() {
		io.Copy(data, os.Stdin)
	}()
	io.Copy(os.Stdout, data)
	msg, _ := io.ReadAll(errStream)
	if len(msg) > 0 {
		fmt.Fprintf(os.Stderr, "%s\n", msg)
		os.Exit(100)
	}
}

func main() {
	flag.Parse()
	u, err := url.Parse(*target)
	if err != nil || *target == "" {
		fail("-url: %v", err)
	}
	switch {
	case *mode == "portforward" && *transport == "spdy":
		spdyPortForward(u)
	case *transport == "spdy":
		spdyExec(u)
	case *transport == "websocket":
		wsExec(u)
	default:
		fail("-transport %q -mode %q", *transport, *mode)
	}
}
