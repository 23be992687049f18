//! The components an engine can run, by kind and id.

use std::collections::BTreeMap;
use std::sync::Arc;

use bgrun_core::RunKind;

use crate::runnable::{ComponentInfo, Runnable};

/// A registered component and its info, read once.
#[derive(Clone)]
pub(crate) struct Registered {
    pub(crate) info: Arc<ComponentInfo>,
    pub(crate) runnable: Arc<dyn Runnable>,
}

/// The components an engine runs.
#[derive(Clone, Default)]
pub struct Registry {
    components: BTreeMap<(RunKind, String), Registered>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.components
                    .keys()
                    .map(|(kind, id)| format!("{kind}/{id}")),
            )
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a component; one with the same kind and id is replaced.
    pub fn register(&mut self, runnable: impl Runnable) -> &mut Self {
        let info = Arc::new(runnable.info());
        self.components.insert(
            (info.kind, info.id.clone()),
            Registered {
                info,
                runnable: Arc::new(runnable),
            },
        );
        self
    }

    /// With a component added.
    pub fn with(mut self, runnable: impl Runnable) -> Self {
        self.register(runnable);
        self
    }

    /// The info of a component.
    pub fn info(&self, kind: RunKind, id: &str) -> Option<&ComponentInfo> {
        self.get(kind, id).map(|registered| &*registered.info)
    }

    /// Every component of a kind, by id.
    pub fn list(&self, kind: RunKind) -> Vec<&ComponentInfo> {
        self.components
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, registered)| &*registered.info)
            .collect()
    }

    pub(crate) fn get(&self, kind: RunKind, id: &str) -> Option<&Registered> {
        self.components.get(&(kind, id.to_owned()))
    }
}
