//! `--log-format json`: one flat JSON object per line.
//!
//! tracing-subscriber's own JSON format nests the fields of the current span
//! under `"span": {...}` and drops those of the outer spans. Log pipelines
//! (Loki's `| json`, Elastic, Vector) work best with flat, stable top-level
//! keys, so this formatter writes the fields of *every* span in scope (outermost
//! first), then the event's own fields, at the top level: a line logged while a
//! rollout is stepped carries `namespace`, `daemonset`, `commit` and `stage`
//! next to `message`. On a name clash the event's field wins over a span's, an
//! inner span's over an outer one's. `span` is the name of the innermost span
//! (`daemonset` for a sync, `rollout` for a rollout step). See docs/metrics.md
//! ("Logs").

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Event formatter for [`tracing_subscriber::fmt`] with `.fmt_fields(JsonFields::new())`.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlatJson;

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut map = Map::new();
        if let Some(scope) = ctx.event_scope() {
            let mut innermost = None;
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<JsonFields>>()
                    && let Ok(Value::Object(fields)) = serde_json::from_str(fields)
                {
                    map.extend(fields);
                }
                innermost = Some(span.name());
            }
            if let Some(name) = innermost {
                map.insert("span".into(), name.into());
            }
        }
        event.record(&mut Visitor(&mut map));
        map.insert(
            "timestamp".into(),
            jiff::Timestamp::now().to_string().into(),
        );
        map.insert(
            "level".into(),
            event.metadata().level().as_str().to_owned().into(),
        );
        writeln!(writer, "{}", Value::Object(map))
    }
}

struct Visitor<'a>(&'a mut Map<String, Value>);

impl Visit for Visitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing::{info, info_span};
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::fmt::format::JsonFields;

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn lines(buf: &Buf) -> Vec<Value> {
        let bytes = buf
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
            .collect()
    }

    #[test]
    fn span_fields_of_every_span_are_flattened_and_event_fields_win() {
        let buf = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .with_writer(buf.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let outer = info_span!("outer", namespace = "ns", commit = "abc");
            let _o = outer.enter();
            let inner = info_span!("rollout", daemonset = "agent", stage = "pool-a");
            let _i = inner.enter();
            inner.record("stage", "pool-b");
            info!(
                node = "n1",
                commit = "override",
                count = 3,
                "replacing {}",
                "pod"
            );
        });
        let lines = lines(&buf);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        assert_eq!(l["message"], "replacing pod");
        assert_eq!(l["namespace"], "ns");
        assert_eq!(l["daemonset"], "agent");
        assert_eq!(l["stage"], "pool-b", "a recorded span field is updated");
        assert_eq!(l["commit"], "override");
        assert_eq!(l["node"], "n1");
        assert_eq!(l["count"], 3);
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["span"], "rollout");
        assert!(l["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }

    #[test]
    fn lines_outside_spans_have_no_span_key() {
        let buf = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .with_writer(buf.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || info!(x = true, "plain"));
        let l = &lines(&buf)[0];
        assert_eq!(l["message"], "plain");
        assert_eq!(l["x"], true);
        assert!(l.get("span").is_none());
    }
}
