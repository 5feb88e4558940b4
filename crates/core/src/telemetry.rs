//! Logging and span export shared by every binary: JSON lines for machines, pretty
//! for people, and, when an OTLP endpoint is configured, every task span exported to
//! an OpenTelemetry collector over OTLP/HTTP (protobuf).
//!
//! Export is off by default. It is on when `telemetry.otlp_endpoint` is set, or else
//! when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is (`OTEL_SDK_DISABLED=true` turns it off).
//! The SDK's other standard variables apply as usual: `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, TelemetryConfig};

/// Set once the OTLP layer is installed: task spans are then made at INFO level (so
/// the exporter sees them whatever the log filter) and join their task's trace.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are being exported (see [`crate::task_span`]).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The installed telemetry; [`Telemetry::shutdown`] flushes the spans not yet sent.
#[must_use = "call shutdown() before exiting, or buffered spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter (blocks up to its timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("could not flush the span exporter: {e}");
        }
    }
}

/// Where spans go: the configured collector, the one the standard environment names,
/// or nowhere.
#[derive(Debug, PartialEq, Eq)]
enum Destination {
    Off,
    /// `/v1/traces` of this base URL.
    Configured(String),
    /// Resolved by the exporter from `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`.
    FromEnvironment,
}

fn destination(config: &TelemetryConfig, env: impl Fn(&str) -> Option<String>) -> Destination {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Destination::Off;
    }
    if let Some(base) = config.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        return Destination::Configured(format!("{}/v1/traces", base.trim_end_matches('/')));
    }
    if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
    {
        return Destination::FromEnvironment;
    }
    Destination::Off
}

/// Installs the global subscriber for `service`; a second call (tests in one process)
/// leaves the first in place. A collector that cannot be set up is reported and
/// skipped: the service runs without export rather than not at all.
pub fn init(log: &LogConfig, telemetry: &TelemetryConfig, service: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match log.format.as_str() {
        "json" => true,
        "pretty" => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // JSON lines carry the fields of every span they happen in (`spans`), so a line
    // logged while a task is processed has its task_id and trace_id.
    let fmt = if json {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.boxed()
    };
    let (provider, failure) = match destination(telemetry, |name| std::env::var(name).ok()) {
        Destination::Off => (None, None),
        target => match tracer_provider(target, service) {
            Ok(provider) => (Some(provider), None),
            Err(e) => (None, Some(e)),
        },
    };
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("tern"))
            .with_threads(false)
            .with_location(false)
            // Only Tern's own spans (and the events inside them) are part of a task's
            // trace; libraries' spans would only add noise and cost.
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.target().starts_with("tern") && *meta.level() <= tracing::Level::INFO
            }))
    });
    let installed = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()
        .is_ok();
    if let Some(e) = failure {
        tracing::error!(error = %e, "OTLP span export is configured but could not start; running without it");
    }
    if installed && provider.is_some() {
        EXPORTING.store(true, Ordering::Relaxed);
        tracing::info!(service, "exporting spans over OTLP");
    }
    Telemetry {
        provider: provider.filter(|_| installed),
    }
}

fn tracer_provider(
    destination: Destination,
    service: &'static str,
) -> Result<SdkTracerProvider, String> {
    // The exporter's HTTP client uses rustls without a built-in crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
    if let Destination::Configured(endpoint) = destination {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter.build().map_err(|e| e.to_string())?;
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| service.to_string());
    let resource = Resource::builder()
        .with_service_name(name)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            crate::VERSION,
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn export_is_off_unless_an_endpoint_is_given() {
        let off = TelemetryConfig::default();
        assert_eq!(destination(&off, env(&[])), Destination::Off);
        assert_eq!(
            destination(&off, env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])),
            Destination::Off
        );
        for var in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ] {
            assert_eq!(
                destination(&off, env(&[(var, "http://collector:4318")])),
                Destination::FromEnvironment
            );
        }
    }

    #[test]
    fn the_configured_endpoint_wins_and_the_sdk_switch_stops_everything() {
        let on = TelemetryConfig {
            otlp_endpoint: Some("http://collector:4318/".into()),
            ..TelemetryConfig::default()
        };
        assert_eq!(
            destination(
                &on,
                env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318")])
            ),
            Destination::Configured("http://collector:4318/v1/traces".into())
        );
        assert_eq!(
            destination(&on, env(&[("OTEL_SDK_DISABLED", "TRUE")])),
            Destination::Off
        );
    }
}
