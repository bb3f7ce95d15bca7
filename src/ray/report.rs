//! Where a monitor sends what it sees.
//!
//! Every monitor (the GCS's health, each daemon's health, the memory
//! sampler) feeds the supervisor's one event stream, but knows only its own
//! observation type: the supervisor hands it a [`Report`] that wraps each
//! observation into the machine's event. So the monitors sit below the
//! machine, and the machine's `Event` can name their types without a
//! circle.

use std::sync::Arc;

/// A sink for observations of type `T`; `send` is false once the
/// supervisor is gone, and the monitor should stop.
pub struct Report<T>(Arc<dyn Fn(T) -> bool + Send + Sync>);

impl<T> Clone for Report<T> {
    fn clone(&self) -> Self {
        Report(self.0.clone())
    }
}

impl<T> Report<T> {
    pub fn new(f: impl Fn(T) -> bool + Send + Sync + 'static) -> Report<T> {
        Report(Arc::new(f))
    }

    pub fn send(&self, observation: T) -> bool {
        (self.0)(observation)
    }
}

impl<T: Send + 'static> Report<T> {
    /// A report into a channel of `T` itself, for tests.
    #[cfg(test)]
    pub fn channel() -> (Report<T>, tokio::sync::mpsc::UnboundedReceiver<T>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Report::new(move |t| tx.send(t).is_ok()), rx)
    }
}
