// extauthz-client: a gRPC client of Envoy's external authorization
// (envoy.service.auth.v3.Authorization/Check) built on Envoy's own generated
// types (go-control-plane), for latchkey's tests and benchmark.
//
// Modes:
//
//	extauthz-client -addr HOST:PORT < cases.json
//	    cases.json is a JSON list of {"name", "headers": {...}, "path",
//	    "context_extensions": {...}}; one JSON line per case on stdout:
//	    {"name", "grpc_code", "message", "http_status", "headers_set",
//	    "append_actions", "headers_to_remove", "denied_headers",
//	    "dynamic_metadata"}.
//	extauthz-client -addr HOST:PORT -until-denied -timeout 60s < cases.json
//	    repeats the first case until its answer is not OK: prints
//	    {"event":"allowed"} after the first OK answer, then the denial's line
//	    with "checks" and "elapsed_ms" (since the first OK answer).
//	extauthz-client -addr HOST:PORT -bench -duration 5s -conns 4 -streams 64 < cases.json
//	    sends the first case from -streams goroutines over -conns
//	    connections for -duration; prints {"checks", "not_ok", "errors",
//	    "seconds", "rate"}.
//	extauthz-client -encode < cases.json > check.bin
//	    writes the first case as one gRPC length-prefixed message (the
//	    request body of a Check call), for HTTP/2 load generators.
//
// -cacert FILE: TLS, trusting only the CA certificate(s) in FILE (the
// server's certificate is verified, for -servername or the host of -addr);
// without it, h2c. There is no way to skip verification.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

type testCase struct {
	Name              string            `json:"name"`
	Headers           map[string]string `json:"headers"`
	Path              string            `json:"path"`
	ContextExtensions map[string]string `json:"context_extensions"`
}

type result struct {
	Name            string            `json:"name"`
	GrpcCode        int32             `json:"grpc_code"`
	Message         string            `json:"message"`
	HTTPStatus      int32             `json:"http_status"`
	HeadersSet      map[string]string `json:"headers_set"`
	AppendActions   map[string]string `json:"append_actions"`
	HeadersToRemove []string          `json:"headers_to_remove"`
	DeniedHeaders   map[string]string `json:"denied_headers"`
	DynamicMetadata map[string]any    `json:"dynamic_metadata"`
	Checks          int               `json:"checks,omitempty"`
	ElapsedMs       float64           `json:"elapsed_ms,omitempty"`
}

func request(c testCase) *authv3.CheckRequest {
	path := c.Path
	if path == "" {
		path = "/"
	}
	headers := map[string]string{":path": path, ":method": "GET", ":authority": "api.example.com"}
	for k, v := range c.Headers {
		headers[k] = v
	}
	return &authv3.CheckRequest{
		Attributes: &authv3.AttributeContext{
			Request: &authv3.AttributeContext_Request{
				Http: &authv3.AttributeContext_HttpRequest{
					Method:   "GET",
					Path:     path,
					Host:     "api.example.com",
					Scheme:   "http",
					Protocol: "HTTP/1.1",
					Headers:  headers,
				},
			},
			ContextExtensions: c.ContextExtensions,
		},
	}
}

func toMap(options []*corev3.HeaderValueOption) (map[string]string, map[string]string) {
	values := map[string]string{}
	actions := map[string]string{}
	for _, o := range options {
		h := o.GetHeader()
		values[h.GetKey()] = h.GetValue()
		actions[h.GetKey()] = o.GetAppendAction().String()
	}
	return values, actions
}

func describe(name string, resp *authv3.CheckResponse) result {
	r := result{
		Name:            name,
		GrpcCode:        resp.GetStatus().GetCode(),
		Message:         resp.GetStatus().GetMessage(),
		HeadersSet:      map[string]string{},
		AppendActions:   map[string]string{},
		HeadersToRemove: []string{},
		DeniedHeaders:   map[string]string{},
		DynamicMetadata: map[string]any{},
	}
	if md := resp.GetDynamicMetadata(); md != nil {
		r.DynamicMetadata = md.AsMap()
	}
	if ok := resp.GetOkResponse(); ok != nil {
		r.HTTPStatus = 200
		r.HeadersSet, r.AppendActions = toMap(ok.GetHeaders())
		if ok.GetHeadersToRemove() != nil {
			r.HeadersToRemove = ok.GetHeadersToRemove()
		}
	}
	if denied := resp.GetDeniedResponse(); denied != nil {
		r.HTTPStatus = int32(denied.GetStatus().GetCode())
		r.DeniedHeaders, _ = toMap(denied.GetHeaders())
	}
	return r
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "extauthz-client: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:9001", "latchkey's --grpc-addr")
	untilDenied := flag.Bool("until-denied", false, "repeat the first case until it is denied")
	bench := flag.Bool("bench", false, "send the first case in a loop and print the rate")
	duration := flag.Duration("duration", 5*time.Second, "how long -bench runs")
	conns := flag.Int("conns", 4, "connections of -bench")
	streams := flag.Int("streams", 64, "concurrent calls of -bench")
	timeout := flag.Duration("timeout", 60*time.Second, "the longest -until-denied waits; each call's deadline is 5 s")
	cacert := flag.String("cacert", "", "TLS, verifying the server against the CA certificate(s) in this PEM file (default: h2c)")
	serverName := flag.String("servername", "", "with -cacert: the name the certificate must carry (default: the host of -addr)")
	encode := flag.Bool("encode", false, "write the first case as a gRPC length-prefixed message to stdout and exit")
	flag.Parse()

	var cases []testCase
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		fail("reading the cases (a JSON list) from stdin: %v", err)
	}
	if len(cases) == 0 {
		fail("no cases on stdin")
	}
	if *encode {
		body, err := proto.Marshal(request(cases[0]))
		if err != nil {
			fail("encoding the CheckRequest: %v", err)
		}
		frame := make([]byte, 5, 5+len(body))
		binary.BigEndian.PutUint32(frame[1:], uint32(len(body)))
		if _, err := os.Stdout.Write(append(frame, body...)); err != nil {
			fail("writing the message: %v", err)
		}
		return
	}
	transport := insecure.NewCredentials()
	if *cacert != "" {
		pem, err := os.ReadFile(*cacert)
		if err != nil {
			fail("reading -cacert: %v", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			fail("-cacert %s holds no PEM certificate", *cacert)
		}
		transport = credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: *serverName, MinVersion: tls.VersionTLS12})
	}
	dial := func() *grpc.ClientConn {
		conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(transport))
		if err != nil {
			fail("connecting to %s: %v", *addr, err)
		}
		return conn
	}
	check := func(client authv3.AuthorizationClient, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return client.Check(ctx, req)
	}
	out := json.NewEncoder(os.Stdout)

	switch {
	case *bench:
		runBench(dial, check, request(cases[0]), *duration, *conns, *streams, out)
	case *untilDenied:
		conn := dial()
		defer conn.Close()
		client := authv3.NewAuthorizationClient(conn)
		req := request(cases[0])
		deadline := time.Now().Add(*timeout)
		var since time.Time
		for checks := 1; time.Now().Before(deadline); checks++ {
			resp, err := check(client, req)
			if err != nil {
				fail("Check: %v", err)
			}
			if resp.GetStatus().GetCode() == 0 {
				if since.IsZero() {
					since = time.Now()
					_ = out.Encode(map[string]string{"event": "allowed"})
				}
				time.Sleep(5 * time.Millisecond)
				continue
			}
			r := describe(cases[0].Name, resp)
			r.Checks = checks
			if !since.IsZero() {
				r.ElapsedMs = float64(time.Since(since).Microseconds()) / 1000
			}
			_ = out.Encode(r)
			return
		}
		fail("still allowed after %s", *timeout)
	default:
		conn := dial()
		defer conn.Close()
		client := authv3.NewAuthorizationClient(conn)
		for _, c := range cases {
			resp, err := check(client, request(c))
			if err != nil {
				fail("Check %q: %v", c.Name, err)
			}
			_ = out.Encode(describe(c.Name, resp))
		}
	}
}

func runBench(
	dial func() *grpc.ClientConn,
	check func(authv3.AuthorizationClient, *authv3.CheckRequest) (*authv3.CheckResponse, error),
	req *authv3.CheckRequest,
	duration time.Duration,
	conns, streams int,
	out *json.Encoder,
) {
	clients := make([]authv3.AuthorizationClient, conns)
	for i := range clients {
		conn := dial()
		defer conn.Close()
		clients[i] = authv3.NewAuthorizationClient(conn)
		// Connect and warm up before the clock starts.
		if _, err := check(clients[i], req); err != nil {
			fail("warm-up Check: %v", err)
		}
	}
	var total, notOK, errors atomic.Int64
	stop := time.Now().Add(duration)
	start := time.Now()
	var wg sync.WaitGroup
	for s := 0; s < streams; s++ {
		wg.Add(1)
		go func(client authv3.AuthorizationClient) {
			defer wg.Done()
			for time.Now().Before(stop) {
				resp, err := check(client, req)
				total.Add(1)
				if err != nil {
					errors.Add(1)
				} else if resp.GetStatus().GetCode() != 0 {
					notOK.Add(1)
				}
			}
		}(clients[s%conns])
	}
	wg.Wait()
	seconds := time.Since(start).Seconds()
	_ = out.Encode(map[string]any{
		"checks":  total.Load(),
		"not_ok":  notOK.Load(),
		"errors":  errors.Load(),
		"seconds": seconds,
		"rate":    float64(total.Load()) / seconds,
	})
}
