//! How the suite gets stores to test.

use std::sync::Arc;

use bgrun_core::{async_trait, Store};

/// Opens stores of one backend for the conformance suite.
///
/// Every check runs on its own [`fresh`](StoreHarness::fresh) store, so checks never see each
/// other's runs. A persistent backend also answers [`reopen`](StoreHarness::reopen), and the
/// suite checks that everything written survives a new store instance.
///
/// ```rust,no_run
/// use std::collections::HashMap;
/// use std::path::{Path, PathBuf};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::{Arc, Mutex};
///
/// use bgrun_core::{async_trait, Store};
/// use bgrun_testkit::StoreHarness;
///
/// # fn open_my_store(path: &Path) -> Arc<dyn Store> { unimplemented!("{path:?}") }
/// /// A harness for a store that lives in a file: one new file per fresh store.
/// struct FileHarness {
///     dir: PathBuf,
///     files: AtomicU64,
///     /// Which file each open store uses, by the address of its `Arc`.
///     paths: Mutex<HashMap<usize, PathBuf>>,
/// }
///
/// fn address(store: &Arc<dyn Store>) -> usize {
///     Arc::as_ptr(store).cast::<()>() as usize
/// }
///
/// #[async_trait]
/// impl StoreHarness for FileHarness {
///     async fn fresh(&self) -> Arc<dyn Store> {
///         let path = self.dir.join(format!("{}.db", self.files.fetch_add(1, Ordering::Relaxed)));
///         let store = open_my_store(&path);
///         self.paths.lock().unwrap().insert(address(&store), path);
///         store
///     }
///
///     async fn reopen(&self, store: Arc<dyn Store>) -> Option<Arc<dyn Store>> {
///         let path = self.paths.lock().unwrap().remove(&address(&store))?;
///         drop(store); // close it first: the new instance must find everything in the file
///         let store = open_my_store(&path);
///         self.paths.lock().unwrap().insert(address(&store), path);
///         Some(store)
///     }
/// }
/// ```
#[async_trait]
pub trait StoreHarness: Send + Sync {
    /// A new, empty store.
    async fn fresh(&self) -> Arc<dyn Store>;

    /// Drops `store` and opens a new instance over the same storage; `None` when the backend
    /// does not persist (the persistence check is then reported as skipped, not passed).
    ///
    /// The suite holds no other handle to `store` when it calls this.
    async fn reopen(&self, store: Arc<dyn Store>) -> Option<Arc<dyn Store>>;
}
