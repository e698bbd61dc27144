//! Logging setup: `tracing` with `RUST_LOG` (default `info`), plain or JSON.
//!
//! Every line goes through [`crate::redact::redact`] on its way to stderr,
//! whatever its level and whichever crate wrote it (latchkey, kube, hyper):
//! a credential in a URL, a header or an error message never reaches the
//! log. The formatter writes each event with one `write_all`, so a line is
//! redacted whole.

use std::io::Write;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber. `json` selects one JSON object per line.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(Redacting(std::io::stderr));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A [`MakeWriter`] whose writers redact credentials before writing.
pub struct Redacting<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter(self.0.make_writer())
    }
}

/// Writes each buffer redacted (one buffer is one formatted event).
pub struct RedactingWriter<W>(pub W);

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(crate::redact::redact(text).as_bytes())?,
            // The formatter only writes UTF-8; anything else is not ours to read.
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_level_and_format_is_redacted() {
        let key = crate::key::ApiKeyValue::generate();
        for json in [false, true] {
            let captured = Captured::default();
            let sink = captured.clone();
            let builder = fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_writer(Redacting(move || sink.clone()));
            let subscriber: Box<dyn tracing::Subscriber + Send + Sync> = if json {
                Box::new(builder.json().finish())
            } else {
                Box::new(builder.finish())
            };
            tracing::subscriber::with_default(subscriber, || {
                let url = format!("https://app/x?api_key={}&page=2", key.expose());
                tracing::trace!(%url, "trace");
                tracing::debug!(header = %format!("Bearer {}", key.expose()), "debug");
                tracing::warn!("error: {} refused", key.expose());
            });
            let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
            assert_eq!(text.lines().count(), 3, "{text}");
            assert!(!text.contains(key.expose()), "{text}");
            assert!(text.contains("page=2"), "{text}");
            if json {
                for line in text.lines() {
                    serde_json::from_str::<serde_json::Value>(line).expect("still JSON");
                }
            }
        }
    }
}
