//! Deleting expired streams that nobody touches any more. An expired stream is gone for its
//! readers and writers at once, but its rows stay until something deletes them: the next read,
//! append or create at its path, which may never come, or this sweep, which the engine runs
//! every `EngineConfig::stream_sweep_every`.

use std::time::Duration;

use bgrun_core::stream::{now_millis, DeleteStreamOutcome, Millis, StreamId};
use bgrun_core::{StoreError, StoreResult};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::Streams;

/// How many expired streams one store call lists.
const PAGE: usize = 256;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Streams deleted with their messages.
    pub(crate) deleted: u64,
    /// Expired streams with forks, soft-deleted (their forks still read their messages).
    pub(crate) soft_deleted: u64,
}

impl Streams {
    /// Deletes the streams expired at `now` (soft-deletes those with forks), a page at a time,
    /// and wakes the readers waiting on them. Stops at the first store error.
    pub(crate) async fn sweep_expired(&self, now: Millis) -> StoreResult<Swept> {
        let mut swept = Swept::default();
        loop {
            let page = self.store.expired_streams(now, PAGE).await?;
            let full = page.len() >= PAGE;
            let before = swept;
            for (path, id) in page {
                self.sweep_one(&path, id, &mut swept).await?;
            }
            // Only a page that deleted something shrank the listing: another one (all taken by
            // another replica, say) would come back the same. The rest waits for the next sweep.
            if !full || swept == before {
                return Ok(swept);
            }
        }
    }

    /// Deletes stream `id` at `path` if it is still there and still expired.
    async fn sweep_one(&self, path: &str, id: StreamId, swept: &mut Swept) -> StoreResult<()> {
        // Judged again by the store in the delete itself: an append or a read that committed
        // since the listing moved a TTL stream's last access, and then the stream lives on.
        match self.store.expire_stream(path, id, now_millis()).await? {
            DeleteStreamOutcome::Deleted => swept.deleted += 1,
            DeleteStreamOutcome::SoftDeleted => swept.soft_deleted += 1,
            // Another replica (or a reader, deleting on access) got there first, or it was
            // replaced, soft-deleted or kept alive since the listing.
            DeleteStreamOutcome::NotFound
            | DeleteStreamOutcome::Gone
            | DeleteStreamOutcome::NotExpired => return Ok(()),
        }
        // Readers waiting at its tail look again and find it gone.
        self.hub.notify(path);
        Ok(())
    }
}

/// Sweeps every `period` (the first one period from now) until `closing` fires. Ends at once,
/// with a warning, when the store keeps streams but cannot list the expired ones.
pub(crate) async fn run(streams: Streams, period: Duration, closing: CancellationToken) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = closing.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let result = tokio::select! {
            // Cut short at shutdown: each delete is one atomic write of the store, done or not,
            // and what is left waits for the next sweep.
            _ = closing.cancelled() => return,
            result = streams.sweep_expired(now_millis()) => result,
        };
        match result {
            Ok(swept) => {
                if swept != Swept::default() {
                    tracing::debug!(
                        deleted = swept.deleted,
                        soft_deleted = swept.soft_deleted,
                        "deleted expired durable streams"
                    );
                }
            }
            Err(StoreError::Unsupported(what)) => {
                tracing::warn!(
                    "this store does not support {what}: expired durable streams are deleted \
                     only when next touched"
                );
                return;
            }
            Err(error) => tracing::warn!(%error, "cannot delete expired durable streams"),
        }
    }
}
