//! The bgrun Store contract, run against SQLite: each fresh store is a new file in a new
//! temporary directory, and a reopen drops the store (releasing its lock) and opens the file again.

#![allow(clippy::unwrap_used)] // test scaffolding: a poisoned lock or a missing tempdir ends the test

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bgrun_core::{async_trait, Store};
use bgrun_store_sqlite::SqliteStore;
use bgrun_testkit::{conformance, StoreHarness};
use tempfile::TempDir;

#[derive(Default)]
struct SqliteHarness {
    /// Every directory handed out, kept until the suite ends.
    dirs: Mutex<Vec<TempDir>>,
    /// The file of each open store, by the address of its `Arc`.
    paths: Mutex<HashMap<usize, PathBuf>>,
}

fn address(store: &Arc<dyn Store>) -> usize {
    Arc::as_ptr(store).cast::<()>() as usize
}

impl SqliteHarness {
    async fn open(&self, path: PathBuf) -> Arc<dyn Store> {
        let store: Arc<dyn Store> = match SqliteStore::open(&path).await {
            Ok(store) => Arc::new(store),
            Err(error) => panic!("opening {}: {error}", path.display()),
        };
        self.paths.lock().unwrap().insert(address(&store), path);
        store
    }
}

#[async_trait]
impl StoreHarness for SqliteHarness {
    async fn fresh(&self) -> Arc<dyn Store> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bgrun.db");
        self.dirs.lock().unwrap().push(dir);
        self.open(path).await
    }

    async fn reopen(&self, store: Arc<dyn Store>) -> Option<Arc<dyn Store>> {
        let path = self.paths.lock().unwrap().remove(&address(&store))?;
        // The last handle: dropping it stops the writer and releases the file's lock.
        drop(store);
        Some(self.open(path).await)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_keeps_the_store_contract() {
    // `assert_conformance`, plus: a store that persists skips nothing (persistence included).
    match conformance(&SqliteHarness::default()).await {
        Ok(report) => assert!(report.skipped.is_empty(), "{report}"),
        Err(failures) => panic!("{failures}"),
    }
}
