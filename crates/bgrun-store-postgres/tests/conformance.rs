//! The bgrun Store conformance suite, against PostgreSQL: every fresh store in a schema of its
//! own, dropped at the end.
#![allow(clippy::unwrap_used)] // test scaffolding: a failed unwrap is a failed test

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bgrun_core::{async_trait, Store};
use bgrun_store_postgres::testing::TestSchema;
use bgrun_testkit::StoreHarness;

#[derive(Default)]
struct Harness {
    /// Every schema handed out, dropped with the harness.
    schemas: Mutex<Vec<Arc<TestSchema>>>,
    /// Which schema each open store uses, by the address of its `Arc`.
    open: Mutex<HashMap<usize, Arc<TestSchema>>>,
}

fn address(store: &Arc<dyn Store>) -> usize {
    Arc::as_ptr(store).cast::<()>() as usize
}

impl Harness {
    async fn open(&self, schema: Arc<TestSchema>) -> Arc<dyn Store> {
        let store: Arc<dyn Store> = Arc::new(schema.store().await.unwrap());
        self.open.lock().unwrap().insert(address(&store), schema);
        store
    }
}

#[async_trait]
impl StoreHarness for Harness {
    async fn fresh(&self) -> Arc<dyn Store> {
        let schema = Arc::new(TestSchema::new());
        self.schemas.lock().unwrap().push(schema.clone());
        self.open(schema).await
    }

    async fn reopen(&self, store: Arc<dyn Store>) -> Option<Arc<dyn Store>> {
        let schema = self.open.lock().unwrap().remove(&address(&store))?;
        drop(store);
        Some(self.open(schema).await)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_keeps_the_store_contract() {
    let harness = Harness::default();
    bgrun_testkit::assert_conformance(&harness).await;
    // Close the stores before their schemas are dropped.
    harness.open.lock().unwrap().clear();
}
