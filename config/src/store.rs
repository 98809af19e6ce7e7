//! The snapshot store: one `ArcSwap`, one writer, many readers.
//!
//! The writer builds a complete new value off the request path and publishes it with one atomic
//! store; a reader takes an `Arc` with [`Store::load`] and keeps using that one value until it is
//! done, so a request never sees half of one table and half of the next.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

#[derive(Debug)]
pub struct Store<T> {
    current: ArcSwap<T>,
    /// Serializes writers and hands out generations in publish order.
    writer: Mutex<u64>,
}

impl<T> Store<T> {
    pub fn new(initial: T) -> Self {
        Self {
            current: ArcSwap::from_pointee(initial),
            writer: Mutex::new(0),
        }
    }

    /// The live value. Hold the `Arc` for as long as one request (or one admin answer) needs a
    /// consistent view.
    #[inline]
    pub fn load(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Builds the next value with the next generation number (starting at 1) and publishes it.
    /// `build` also sees the previous value, so that state can be carried over.
    pub fn publish(&self, build: impl FnOnce(u64, &T) -> T) -> u64 {
        let mut generation = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let next = *generation + 1;
        let previous = self.current.load_full();
        let value = build(next, &previous);
        self.current.store(Arc::new(value));
        *generation = next;
        next
    }

    /// The generation of the last publish (0 before the first).
    pub fn generation(&self) -> u64 {
        *self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_advance_and_readers_keep_their_snapshot() {
        let store = Store::new((0u64, "empty"));
        let held = store.load();
        assert_eq!(store.publish(|g, _| (g, "one")), 1);
        assert_eq!(
            store.publish(|g, prev| (g, if prev.1 == "one" { "two" } else { "?" })),
            2
        );
        assert_eq!(*held, (0, "empty"));
        assert_eq!(*store.load(), (2, "two"));
        assert_eq!(store.generation(), 2);
    }
}
