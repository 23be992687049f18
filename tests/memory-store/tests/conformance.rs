//! The one test a store needs: the whole bgrun Store contract.

use std::sync::Arc;

use bgrun_core::{async_trait, Store};
use bgrun_example_memory_store::MemoryStore;
use bgrun_testkit::{assert_conformance, StoreHarness};

struct Harness;

#[async_trait]
impl StoreHarness for Harness {
    async fn fresh(&self) -> Arc<dyn Store> {
        Arc::new(MemoryStore::new())
    }

    async fn reopen(&self, _store: Arc<dyn Store>) -> Option<Arc<dyn Store>> {
        None // nothing survives the process: the persistence checks are skipped
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_keeps_the_store_contract() {
    assert_conformance(&Harness).await;
}
