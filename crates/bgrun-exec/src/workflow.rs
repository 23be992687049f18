//! Workflows built from steps: a step runs a component as a child run or a closure; `Parallel`
//! runs steps concurrently and gives their results back in declared order; a workflow is a
//! sequence of steps. Each step's output is the next step's input.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bgrun_core::{RunKind, RunTarget};
use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::context::RunContext;
use crate::runnable::{ComponentInfo, RunFailure, RunOutput, Runnable};

/// What a step sees: the workflow's message, the previous step's output, and the output of
/// every step finished so far, by name.
#[derive(Debug, Clone, Default)]
pub struct StepInput {
    /// The workflow run's input message.
    pub message: String,
    /// The previous step's output (the message, for the first step).
    pub previous: String,
    /// Outputs of finished steps, by step name.
    pub outputs: BTreeMap<String, String>,
}

type StepFn = Arc<
    dyn Fn(RunContext, StepInput) -> BoxFuture<'static, Result<String, RunFailure>> + Send + Sync,
>;

/// What a component step runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepSource {
    /// The previous step's output.
    Previous,
    /// The workflow's own message.
    Message,
}

/// One step of a workflow.
#[derive(Clone)]
pub enum Step {
    /// Runs a component as a child run; its output is the child's content.
    Component {
        /// The step's name (in `step_name` of its events).
        name: String,
        /// The component.
        target: RunTarget,
        /// Parameters passed to it; `None` passes the workflow's own parameters.
        params: Option<Map<String, Value>>,
        /// What it runs on.
        source: StepSource,
    },
    /// Runs a closure in the workflow's own run.
    Function {
        /// The step's name.
        name: String,
        /// The work.
        run: StepFn,
    },
    /// Runs steps concurrently; the output is theirs in declared order, one line each
    /// (`name: output`).
    Parallel {
        /// The group's name.
        name: String,
        /// The steps.
        steps: Vec<Step>,
    },
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Component { name, target, .. } => write!(f, "Step({name}: {target})"),
            Self::Function { name, .. } => write!(f, "Step({name}: fn)"),
            Self::Parallel { name, steps } => write!(f, "Parallel({name}: {steps:?})"),
        }
    }
}

impl Step {
    /// A step that runs an agent (a child run) on the previous step's output.
    pub fn agent(name: &str, agent_id: &str) -> Self {
        Self::Component {
            name: name.into(),
            target: RunTarget::new(RunKind::Agent, agent_id),
            params: None,
            source: StepSource::Previous,
        }
    }

    /// A component step that runs on the workflow's message instead of the previous output.
    pub fn on_message(self) -> Self {
        match self {
            Self::Component {
                name,
                target,
                params,
                ..
            } => Self::Component {
                name,
                target,
                params,
                source: StepSource::Message,
            },
            other => other,
        }
    }

    /// A step that runs a closure.
    pub fn function<F, Fut>(name: &str, run: F) -> Self
    where
        F: Fn(RunContext, StepInput) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<String, RunFailure>> + Send + 'static,
    {
        Self::Function {
            name: name.into(),
            run: Arc::new(move |ctx, input| Box::pin(run(ctx, input))),
        }
    }

    /// Steps run concurrently, results in declared order.
    pub fn parallel(name: &str, steps: Vec<Step>) -> Self {
        Self::Parallel {
            name: name.into(),
            steps,
        }
    }

    /// The step's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Component { name, .. }
            | Self::Function { name, .. }
            | Self::Parallel { name, .. } => name,
        }
    }

    /// Runs the step: `StepStarted`, its work, `StepCompleted` with its output as `content`.
    fn execute<'a>(
        &'a self,
        ctx: &'a RunContext,
        input: StepInput,
    ) -> BoxFuture<'a, Result<String, RunFailure>> {
        Box::pin(async move {
            let name = self.name();
            ctx.emit("StepStarted", step_fields(name, None)).await?;
            let output = match self {
                Self::Component {
                    target,
                    params,
                    source,
                    ..
                } => {
                    let params = params.clone().unwrap_or_else(|| ctx.params().clone());
                    let on = match source {
                        StepSource::Previous => input.previous.clone(),
                        StepSource::Message => input.message.clone(),
                    };
                    let child = ctx.run_child(target.clone(), on, params).await?;
                    child.content.unwrap_or_default()
                }
                Self::Function { run, .. } => run(ctx.clone(), input).await?,
                Self::Parallel { steps, .. } => {
                    ctx.emit("ParallelExecutionStarted", step_fields(name, None))
                        .await?;
                    let branches = steps.iter().map(|step| step.execute(ctx, input.clone()));
                    let results = futures::future::try_join_all(branches).await?;
                    ctx.emit("ParallelExecutionCompleted", step_fields(name, None))
                        .await?;
                    steps
                        .iter()
                        .zip(results)
                        .map(|(step, output)| format!("{}: {output}", step.name()))
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            };
            ctx.emit("StepCompleted", step_fields(name, Some(&output)))
                .await?;
            Ok(output)
        })
    }
}

fn step_fields(name: &str, content: Option<&str>) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("step_name".into(), Value::String(name.to_owned()));
    if let Some(content) = content {
        fields.insert("content".into(), Value::String(content.to_owned()));
    }
    fields
}

/// A workflow: steps run in sequence, each given the previous one's output; the last step's
/// output is the workflow's content.
#[derive(Debug, Clone)]
pub struct Workflow {
    info: ComponentInfo,
    steps: Vec<Step>,
}

impl Workflow {
    /// A workflow with this info (its kind is set to `workflow`) and steps.
    pub fn new(info: ComponentInfo, steps: Vec<Step>) -> Self {
        Self {
            info: ComponentInfo {
                kind: RunKind::Workflow,
                ..info
            },
            steps,
        }
    }
}

#[async_trait]
impl Runnable for Workflow {
    fn info(&self) -> ComponentInfo {
        self.info.clone()
    }

    async fn run(&self, ctx: RunContext) -> Result<RunOutput, RunFailure> {
        let mut input = StepInput {
            message: ctx.input().to_owned(),
            previous: ctx.input().to_owned(),
            outputs: BTreeMap::new(),
        };
        for step in &self.steps {
            let output = step.execute(&ctx, input.clone()).await?;
            input.outputs.insert(step.name().to_owned(), output.clone());
            input.previous = output;
        }
        Ok(RunOutput::content(input.previous))
    }
}
