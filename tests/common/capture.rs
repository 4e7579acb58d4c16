//! pgvigil's structured log events (those with an `event` field), captured for the test
//! that runs now. Tests that use it run one at a time: [`serial`] returns the guard and
//! clears what earlier tests captured. Logs still go to stderr as `common::init_logging`
//! sends them (`TEST_LOG`, default warn).
#![allow(dead_code)]

use std::sync::Mutex;
use std::time::Instant;

use tracing_subscriber::prelude::*;

/// One event pgvigil logged with an `event` field.
#[derive(Debug, Clone)]
pub struct Logged {
    pub event: String,
    pub node: String,
    pub error: String,
    pub elapsed_ms: Option<u64>,
    pub promoted_ms: Option<u64>,
    /// When it was captured.
    pub at: Instant,
}

static EVENTS: Mutex<Vec<Logged>> = Mutex::new(Vec::new());
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Default)]
struct Fields {
    event: Option<String>,
    node: String,
    error: String,
    elapsed_ms: Option<u64>,
    promoted_ms: Option<u64>,
}

impl Fields {
    fn set(&mut self, name: &str, value: String) {
        match name {
            "event" => self.event = Some(value),
            "node" => self.node = value,
            "error" => self.error = value,
            _ => {}
        }
    }
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.set(field.name(), value.to_string());
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        match field.name() {
            "elapsed_ms" => self.elapsed_ms = Some(value),
            "promoted_ms" => self.promoted_ms = Some(value),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.set(field.name(), format!("{value:?}"));
    }
}

/// Keeps pgvigil's structured events.
struct Capture;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        if let Some(name) = f.event {
            let logged = Logged { event: name, node: f.node, error: f.error, elapsed_ms: f.elapsed_ms, promoted_ms: f.promoted_ms, at: Instant::now() };
            EVENTS.lock().unwrap_or_else(|p| p.into_inner()).push(logged);
        }
    }
}

/// Runs the tests of a file one at a time, each starting with no captured event.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let text = crate::common::text_log();
        let capture = Capture.with_filter(tracing_subscriber::filter::Targets::new().with_target("pgvigil", tracing::Level::INFO));
        // common::init_logging, called later, then finds a subscriber and does nothing.
        let _ = tracing_subscriber::registry().with(text).with(capture).with(crate::common::leaks::layer()).try_init();
    });
    let guard = SERIAL.lock().await;
    EVENTS.lock().unwrap_or_else(|p| p.into_inner()).clear();
    guard
}

/// Everything captured since this test's `serial()`.
pub fn events() -> Vec<Logged> {
    EVENTS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The captured events named `name`.
pub fn logged(name: &str) -> Vec<Logged> {
    events().into_iter().filter(|e| e.event == name).collect()
}
