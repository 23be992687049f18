//! The engine's semantics end to end, every test on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod children;
mod faults;
mod fixture;
mod replicas;
mod runs;
mod streams;
