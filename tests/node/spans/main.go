// Command spans sends spans the way instrumented applications do, configured only by
// the environment of its container: in a Pod injected by tracehook, what it sends and
// where is exactly what tracehook's variables say. The real-node tests run it inside
// Pods (image tracehook.dev/test-spans, built by tests/node/build.sh).
//
//	spans otlp NAME     one trace (span NAME with a child NAME-child) through the
//	                    OpenTelemetry Go SDK: exporter and protocol from
//	                    OTEL_TRACES_EXPORTER / OTEL_EXPORTER_OTLP_PROTOCOL (autoexport),
//	                    endpoint from OTEL_EXPORTER_OTLP_*, resource from
//	                    OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
//	spans jaeger NAME   the same trace through jaeger-client-go (config.FromEnv:
//	                    JAEGER_SERVICE_NAME, JAEGER_AGENT_HOST/PORT, JAEGER_TAGS), over
//	                    UDP compact Thrift to the agent
//	spans loop otlp|jaeger NAME
//	                    `otlp NAME-<n>` (or `jaeger NAME-<n>`) every second until
//	                    stopped, n counting from 0; a failure is logged and the loop
//	                    goes on, as an application's would
//	spans rate otlp|jaeger PER_SECOND SECONDS
//	                    PER_SECOND spans a second for SECONDS, spread over the second,
//	                    each a server span with an HTTP request's attributes, through
//	                    the SDKs' usual asynchronous paths (the OpenTelemetry batch
//	                    processor, jaeger-client-go's queued UDP reporter); prints how
//	                    many were made and, for OTLP, how many exports failed (the SDK
//	                    drops what it cannot export or queue, as in an application)
//	spans idle          waits for SIGTERM (a container to exec into)
//
// `otlp` exits 1 when the export failed; `jaeger` cannot tell (UDP), so its spans are
// checked where they arrive.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/opentracing/opentracing-go"
	"github.com/opentracing/opentracing-go/ext"
	jaegercfg "github.com/uber/jaeger-client-go/config"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "otlp":
		err = otlp(context.Background(), name())
	case "jaeger":
		err = jaeger(name())
	case "loop":
		if len(os.Args) != 4 || (os.Args[2] != "otlp" && os.Args[2] != "jaeger") || os.Args[3] == "" {
			usage()
		}
		loop(os.Args[2], os.Args[3])
	case "rate":
		err = rate(os.Args[2:])
	case "idle":
		idle()
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "spans:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: spans otlp NAME | jaeger NAME | loop otlp|jaeger NAME | rate otlp|jaeger PER_SECOND SECONDS | idle")
	os.Exit(2)
}

func name() string {
	if len(os.Args) != 3 || os.Args[2] == "" {
		usage()
	}
	return os.Args[2]
}

// errorCounter counts the errors the SDK reports (failed exports) and keeps the first.
type errorCounter struct {
	mu    sync.Mutex
	n     int
	first error
}

func (c *errorCounter) Handle(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	if c.first == nil {
		c.first = err
	}
}

// otlpProvider is the OpenTelemetry set-up of an instrumented application, read from
// the environment: exporter and protocol (autoexport), OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES (the SDK's default resource). Errors go to handler. A
// synchronous processor exports (or fails) before Shutdown returns; a batched one is
// the asynchronous path applications usually take.
func otlpProvider(ctx context.Context, handler otel.ErrorHandler, batched bool) (*sdktrace.TracerProvider, error) {
	otel.SetErrorHandler(handler)
	exporter, err := autoexport.NewSpanExporter(ctx)
	if err != nil {
		return nil, fmt.Errorf("exporter: %w", err)
	}
	res, err := resource.New(ctx, resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil {
		return nil, fmt.Errorf("resource: %w", err)
	}
	processor := sdktrace.WithSyncer(exporter)
	if batched {
		processor = sdktrace.WithBatcher(exporter)
	}
	return sdktrace.NewTracerProvider(processor, sdktrace.WithResource(res)), nil
}

// jaegerTracer is jaeger-client-go's set-up from the environment (config.FromEnv:
// JAEGER_SERVICE_NAME, JAEGER_AGENT_HOST/PORT, JAEGER_TAGS), keeping every trace (the
// default remote sampler would ask the agent first). Closing the closer flushes the
// reporter's queue to the agent.
func jaegerTracer() (opentracing.Tracer, io.Closer, string, error) {
	cfg, err := jaegercfg.FromEnv()
	if err != nil {
		return nil, nil, "", fmt.Errorf("jaeger configuration from the environment: %w", err)
	}
	cfg.Sampler = &jaegercfg.SamplerConfig{Type: "const", Param: 1}
	tracer, closer, err := cfg.NewTracer()
	if err != nil {
		return nil, nil, "", fmt.Errorf("tracer: %w", err)
	}
	return tracer, closer, cfg.ServiceName, nil
}

func otlp(ctx context.Context, name string) error {
	handler := &errorCounter{}
	provider, err := otlpProvider(ctx, handler, false)
	if err != nil {
		return err
	}
	tracer := provider.Tracer("tracehook.dev/tests/spans")
	parentCtx, parent := tracer.Start(ctx, name)
	parent.SetAttributes(attribute.String("test.client", "otel-go"))
	_, child := tracer.Start(parentCtx, name+"-child")
	time.Sleep(5 * time.Millisecond)
	child.End()
	parent.End()
	shutdownCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err = provider.Shutdown(shutdownCtx)
	handler.mu.Lock()
	defer handler.mu.Unlock()
	if err := errors.Join(err, handler.first); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	fmt.Printf("sent %s (trace %s)\n", name, parent.SpanContext().TraceID())
	return nil
}

func jaeger(name string) error {
	tracer, closer, service, err := jaegerTracer()
	if err != nil {
		return err
	}
	parent := tracer.StartSpan(name)
	parent.SetTag("test.client", "jaeger-client-go")
	child := tracer.StartSpan(name+"-child", opentracing.ChildOf(parent.Context()))
	time.Sleep(5 * time.Millisecond)
	child.Finish()
	parent.Finish()
	if err := closer.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	fmt.Printf("sent %s as %s\n", name, service)
	return nil
}

func loop(via, name string) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	for n := 0; ; n++ {
		span := fmt.Sprintf("%s-%d", name, n)
		var err error
		if via == "otlp" {
			err = otlp(ctx, span)
		} else {
			err = jaeger(span)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "spans: %s: %v\n", span, err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func idle() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	<-ctx.Done()
}

// rate sends spans at a steady rate (see the package comment).
func rate(args []string) error {
	if len(args) != 3 || (args[0] != "otlp" && args[0] != "jaeger") {
		usage()
	}
	perSecond, err1 := strconv.Atoi(args[1])
	seconds, err2 := strconv.Atoi(args[2])
	if err1 != nil || err2 != nil || perSecond <= 0 || seconds <= 0 {
		usage()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var span func(n int)
	var finish func() error
	failures := &errorCounter{}
	if args[0] == "otlp" {
		provider, err := otlpProvider(ctx, failures, true)
		if err != nil {
			return err
		}
		tracer := provider.Tracer("tracehook.dev/tests/spans")
		span = func(n int) {
			_, s := tracer.Start(ctx, "GET /dispatch", trace.WithSpanKind(trace.SpanKindServer))
			s.SetAttributes(
				attribute.String("http.request.method", "GET"),
				attribute.String("url.path", "/dispatch"),
				attribute.String("url.query", fmt.Sprintf("customer=%d", n%1000)),
				attribute.Int("http.response.status_code", 200),
				attribute.String("server.address", "frontend"),
				attribute.Int("server.port", 8080),
				attribute.String("user_agent.original", "spans/1"),
			)
			s.End()
		}
		finish = func() error {
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return provider.Shutdown(shutdownCtx)
		}
	} else {
		tracer, closer, _, err := jaegerTracer()
		if err != nil {
			return err
		}
		span = func(n int) {
			s := tracer.StartSpan("GET /dispatch")
			ext.SpanKindRPCServer.Set(s)
			ext.HTTPMethod.Set(s, "GET")
			ext.HTTPUrl.Set(s, fmt.Sprintf("/dispatch?customer=%d", n%1000))
			ext.HTTPStatusCode.Set(s, 200)
			s.SetTag("server.address", "frontend")
			s.SetTag("user_agent.original", "spans/1")
			s.Finish()
		}
		finish = closer.Close
	}
	// Ticks of 10 ms, each making its share of the second's spans.
	const ticksPerSecond = 100
	ticker := time.NewTicker(time.Second / ticksPerSecond)
	defer ticker.Stop()
	started := time.Now()
	made := 0
	for tick := 0; tick < seconds*ticksPerSecond; tick++ {
		due := (tick + 1) * perSecond / ticksPerSecond
		for ; made < due; made++ {
			span(made)
		}
		select {
		case <-ctx.Done():
			tick = seconds * ticksPerSecond
		case <-ticker.C:
		}
	}
	elapsed := time.Since(started).Seconds()
	err := finish()
	failures.mu.Lock()
	defer failures.mu.Unlock()
	fmt.Printf("rate %s: %d spans in %.1f s (%.0f/s), %d export errors", args[0], made, elapsed,
		float64(made)/elapsed, failures.n)
	if failures.first != nil {
		fmt.Printf(" (first: %v)", failures.first)
	}
	fmt.Println()
	if err != nil {
		fmt.Printf("shutdown: %v\n", err)
	}
	return nil
}
