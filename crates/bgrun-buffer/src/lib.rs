//! bgrun's in-memory event log: many append-only streams of [`Event`](bgrun_core::Event)s with
//! gapless indices, delivery only of what the store already holds, a live tail, and bounded
//! memory. It knows nothing of runs or statuses: the engine (`bgrun-exec`) uses it for run events,
//! and any other durable stream can use it the same way.
//!
//! The writer of a stream appends, [`take`](StreamWriter::take)s batches for its store, and
//! [`mark_durable`](StreamWriter::mark_durable)s what the store accepted; subscribers see exactly
//! those events, in order, once each.
//!
//! ```
//! use bgrun_buffer::{Batch, EventLog, LogConfig};
//! use bgrun_core::Event;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let log = EventLog::new(LogConfig::default());
//! let writer = log.open("stream-1", 0)?;
//! let mut reader = log.subscribe(&"stream-1", None).expect("open");
//!
//! writer.append(|index| Event::from_parts(index, "Hello", format!(r#"{{"n":{index}}}"#))).await?;
//! let batch = writer.take(1000); // ... write `batch` to the store, then:
//! writer.mark_durable(batch.len() as u64)?;
//! writer.close();
//!
//! let Batch::Events(events) = reader.next_batch(100).await else { panic!() };
//! assert_eq!(events[0].json(), r#"{"n":0}"#);
//! assert_eq!(reader.next_batch(100).await, Batch::End);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod config;
mod log;
mod stream;
mod subscription;

pub use config::LogConfig;
pub use log::{EventLog, LogError, StreamWriter};
pub use subscription::{Batch, Subscription};

#[cfg(test)]
mod tests;
