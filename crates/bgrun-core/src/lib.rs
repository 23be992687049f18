//! The run model of [bgrun](https://example.invalid/bgrun): ids, the status machine, the event
//! envelope, component parameters, the [`Store`] trait and its errors. No I/O lives here; the
//! engine (`bgrun-exec`) and the stores (`bgrun-store-sqlite`, `bgrun-store-postgres`, or your
//! own) build on it.
//!
//! ```
//! use bgrun_core::{Event, Envelope, NewRun, RunKind, RunStatus, RunTarget};
//!
//! let run = NewRun::new(RunTarget::new(RunKind::Agent, "echo"), "hello").into_record();
//! assert_eq!(run.status, RunStatus::Pending);
//! assert!(!run.has_completed());
//! assert!(RunStatus::Pending.can_become(RunStatus::Cancelled));
//! assert!(RunStatus::Completed.check_transition(RunStatus::Running).is_err());
//!
//! let envelope = Envelope { run_id: &run.run_id, session_id: &run.session_id, created_at: run.created_at };
//! let started = Event::render(envelope, 0, RunKind::Agent.started_event(), &Default::default());
//! assert_eq!(started.index(), 0);
//! assert!(started.json().starts_with(r#"{"event":"RunStarted","run_id":"#));
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod event;
mod frame;
mod id;
mod params;
mod run;
mod status;
mod store;
pub mod stream;
mod target;

pub use error::{InvalidInput, InvalidTransition, StoreError, StoreResult};
pub use event::{Envelope, Event, ENVELOPE_KEYS};
pub use frame::Frames;
pub use id::{RunId, SessionId, MAX_ID_LEN};
pub use params::{parse_bool, parse_int, validate_params, ParamKind, ParamSpec};
pub use run::{
    now, CreateAndStart, CreateOutcome, LeaseGrant, NewRun, RunFilter, RunPage, RunRecord,
    Timestamp, Transition, TransitionOutcome, IDEMPOTENCY_WINDOW_SECS,
};
pub use status::{CancellationStage, RunStatus};
pub use store::{NotificationStream, Store, StoreNotification, MAX_PAGE_SIZE};
pub use target::{Outcome, RunKind, RunTarget};

/// Re-exported so store backends implement [`Store`] with the same macro.
pub use async_trait::async_trait;
