package webhook

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Outcomes of an admission, the outcome label of the metrics.
const (
	outcomeInjected  = "injected"  // the pod was patched
	outcomeCompliant = "compliant" // the pod already carried the values
	outcomeSkipped   = "skipped"   // left alone; the reason label says why
	outcomeError     = "error"     // allowed unchanged after an internal error
)

var (
	admissions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keepalive_admissions_total",
		Help: "Pod admissions by outcome (injected, compliant, skipped, error) and reason (the skip reason or the failing step).",
	}, []string{"outcome", "reason"})

	admissionSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "keepalive_admission_duration_seconds",
		Help:    "Time from reading an admission review to the decision and patch, in seconds.",
		Buckets: []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 10e-3, 50e-3},
	})
)

// The steps an admission can fail at, the reasons of outcomeError.
const (
	failPanic     = "panic"
	failRead      = "read"
	failDecode    = "decode"
	failNotAPod   = "not-a-pod"
	failNamespace = "namespace"
)

// errorReasons have their series from the start, at 0, so that increase()
// sees the first error: Prometheus sees no increase in a counter that
// appears at 1.
var errorReasons = []string{failPanic, failRead, failDecode, failNotAPod, failNamespace}

func init() {
	metrics.Registry.MustRegister(admissions, admissionSeconds)
	for _, r := range errorReasons {
		admissions.WithLabelValues(outcomeError, r)
	}
}

func observe(outcome, reason string, d time.Duration) {
	admissions.WithLabelValues(outcome, reason).Inc()
	admissionSeconds.Observe(d.Seconds())
}
