//! Telemetry: Istio-standard metrics with bounded cardinality, the access log (Istio text or JSON), and
//! OpenTelemetry tracing. The proxy hands each finished request to this module as one record.
