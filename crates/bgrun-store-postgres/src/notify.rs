//! LISTEN/NOTIFY: hints that a run's log grew, that a cancel was requested or that a durable
//! stream changed, for every replica.
//!
//! Writers send `pg_notify` right after the transaction that makes the change commits (in a
//! notification-only transaction, one per batch of writes, so that notifying writes do not
//! commit one at a time), so a
//! notification is only ever sent for a committed change; cancel intents notify in their own
//! transaction. One connection per store listens. Notifications are
//! hints: after the listener lost its connection (and with it whatever was sent meanwhile) it
//! sends [`Notification::Resync`], and consumers re-read the tables, which are the truth.

use std::time::Duration;

use bgrun_core::stream::StreamId;
use bgrun_core::RunId;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};

/// What another writer (on any replica) just committed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notification {
    /// The run's log is stored up to `last_event_index` (inclusive).
    Durable {
        /// The run.
        run_id: RunId,
        /// Its last stored event's index.
        last_event_index: u64,
    },
    /// A cancel intent was recorded for the run.
    Cancel {
        /// The run.
        run_id: RunId,
    },
    /// Durable stream `id` changed: appended to, closed or deleted.
    Stream {
        /// The stream.
        id: StreamId,
    },
    /// The listener reconnected: notifications may have been missed, re-read the store.
    Resync,
}

/// The channel names of one schema.
#[derive(Debug, Clone)]
pub(crate) struct Channels {
    pub(crate) durable: String,
    pub(crate) cancel: String,
    pub(crate) stream: String,
}

impl Channels {
    pub(crate) fn new(schema: &str) -> Self {
        Self {
            durable: format!("{schema}_durable"),
            cancel: format!("{schema}_cancel"),
            stream: format!("{schema}_stream"),
        }
    }

    /// The payload of a `Stream` notification: the stream's id, nothing else (a listener
    /// re-reads the stream; payloads stay far below NOTIFY's 8000-byte limit).
    pub(crate) fn stream_payload(id: StreamId) -> String {
        id.to_string()
    }

    /// The payload of a `Durable` notification: `run_id:last_event_index`.
    pub(crate) fn durable_payload(run_id: &RunId, last_event_index: u64) -> String {
        format!("{run_id}:{last_event_index}")
    }

    fn parse(&self, channel: &str, payload: &str) -> Option<Notification> {
        if channel == self.durable {
            let (run_id, index) = payload.rsplit_once(':')?;
            Some(Notification::Durable {
                run_id: RunId::parse(run_id).ok()?,
                last_event_index: index.parse().ok()?,
            })
        } else if channel == self.cancel {
            Some(Notification::Cancel {
                run_id: RunId::parse(payload).ok()?,
            })
        } else if channel == self.stream {
            Some(Notification::Stream {
                id: StreamId::new(payload.parse().ok()?),
            })
        } else {
            None
        }
    }

    fn listen_sql(&self) -> String {
        format!(
            "LISTEN \"{}\"; LISTEN \"{}\"; LISTEN \"{}\";",
            self.durable, self.cancel, self.stream
        )
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Listens until the returned task is aborted. Resolves `ready` once the first LISTEN is in
/// place, or with the first connection's error.
pub(crate) fn spawn_listener(
    config: tokio_postgres::Config,
    channels: Channels,
    sender: broadcast::Sender<Notification>,
    ready: tokio::sync::oneshot::Sender<Result<(), tokio_postgres::Error>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ready = Some(ready);
        let mut backoff = MIN_BACKOFF;
        loop {
            let result = listen(&config, &channels, &sender, &mut ready, &mut backoff).await;
            if let Err(error) = result {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(error));
                    return;
                }
                tracing::warn!(%error, ?backoff, "bgrun LISTEN connection lost; reconnecting");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    })
}

/// One connection's life: connect, LISTEN, forward notifications until it drops.
async fn listen(
    config: &tokio_postgres::Config,
    channels: &Channels,
    sender: &broadcast::Sender<Notification>,
    ready: &mut Option<tokio::sync::oneshot::Sender<Result<(), tokio_postgres::Error>>>,
    backoff: &mut Duration,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let forward = |message: AsyncMessage| {
        if let AsyncMessage::Notification(note) = message {
            if let Some(notification) = channels.parse(note.channel(), note.payload()) {
                // No receiver is fine: nobody is waiting.
                let _ = sender.send(notification);
            }
        }
    };
    let listen_sql = channels.listen_sql();
    let subscribe = client.batch_execute(&listen_sql);
    tokio::pin!(subscribe);
    loop {
        tokio::select! {
            result = &mut subscribe => {
                result?;
                break;
            }
            message = messages.next() => match message {
                Some(Ok(message)) => forward(message),
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            },
        }
    }
    match ready.take() {
        Some(ready) => {
            let _ = ready.send(Ok(()));
        }
        None => {
            let _ = sender.send(Notification::Resync);
        }
    }
    *backoff = MIN_BACKOFF;
    // `client` lives until the connection ends: dropping it would close the connection.
    while let Some(message) = messages.next().await {
        forward(message?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_back() {
        let channels = Channels::new("bgrun");
        let run_id = RunId::parse("a:b").unwrap();
        let payload = Channels::durable_payload(&run_id, 7);
        assert_eq!(
            channels.parse("bgrun_durable", &payload),
            Some(Notification::Durable {
                run_id: run_id.clone(),
                last_event_index: 7
            })
        );
        assert_eq!(
            channels.parse("bgrun_cancel", "a:b"),
            Some(Notification::Cancel { run_id })
        );
        assert_eq!(
            channels.parse("bgrun_stream", &Channels::stream_payload(StreamId::new(42))),
            Some(Notification::Stream {
                id: StreamId::new(42)
            })
        );
        assert_eq!(channels.parse("bgrun_stream", "x"), None);
        assert_eq!(channels.parse("other_cancel", "x"), None);
        assert_eq!(channels.parse("bgrun_durable", "x"), None);
    }
}
