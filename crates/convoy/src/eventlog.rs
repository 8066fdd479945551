//! A tracing layer that copies every log event carrying an `event` field
//! (the node's structured events) into the [`EventRing`] served by the
//! admin API. High-volume per-request lines are not events and never
//! reach it.

use std::sync::Arc;

use convoy_core::events::EventRing;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Copies structured events into a ring.
pub struct RingLayer {
    pub ring: Arc<EventRing>,
}

struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), Value::from(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
}

/// Events too frequent or too bulky for the ring.
const SKIPPED: [&str; 2] = ["query", "access"];

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if !event
            .metadata()
            .fields()
            .iter()
            .any(|f| f.name() == "event")
        {
            return;
        }
        let mut f = Fields(Map::new());
        event.record(&mut f);
        let name = f.0.get("event").and_then(Value::as_str).unwrap_or("");
        if SKIPPED.contains(&name) {
            return;
        }
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        f.0.insert("time_ms".into(), Value::from(ms));
        f.0.insert(
            "level".into(),
            Value::from(event.metadata().level().as_str().to_ascii_lowercase()),
        );
        self.ring.push(Value::Object(f.0));
    }
}
