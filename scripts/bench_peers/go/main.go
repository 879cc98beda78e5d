// Bench peer: Go net/http serving / and /metrics, counting requests in a client_golang counter and a
// latency histogram with the names our server uses. Started by scripts/bench_server.py when `go` is
// installed (go build here, then run on the bench's core); not part of the service.
//
//	go build -o peer . && GOMAXPROCS=1 ./peer -addr 127.0.0.1:8123
package main

import (
	"flag"
	"log"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

var (
	requests = prometheus.NewCounterVec(
		prometheus.CounterOpts{Name: "hello_world_requests_total", Help: "Requests answered, by method, route and status code."},
		[]string{"method", "path", "code"},
	)
	duration = prometheus.NewHistogramVec(
		prometheus.HistogramOpts{
			Name:    "hello_world_request_duration_seconds",
			Help:    "Time to answer a request.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5},
		},
		[]string{"path"},
	)
	hello = []byte("Hello, World!\n")
)

// counted counts and times every request; the route label is "/" or "/metrics", anything else "other".
func counted(handler http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		started := time.Now()
		route := r.URL.Path
		if route != "/" && route != "/metrics" {
			route = "other"
		}
		recorder := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		handler(recorder, r)
		requests.WithLabelValues(r.Method, route, strconv.Itoa(recorder.code)).Inc()
		duration.WithLabelValues(route).Observe(time.Since(started).Seconds())
	}
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8000", "address to listen on")
	flag.Parse()
	prometheus.MustRegister(requests, duration)
	metrics := promhttp.Handler()
	mux := http.NewServeMux()
	mux.HandleFunc("/", counted(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write(hello)
	}))
	mux.HandleFunc("/metrics", counted(metrics.ServeHTTP))
	log.Fatal(http.ListenAndServe(*addr, mux))
}
