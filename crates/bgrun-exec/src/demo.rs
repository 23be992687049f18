//! The demo components of `bgrun serve`: deterministic agents that exercise every path of the
//! engine (streaming, long runs, failure, panic, child runs, parallel steps). The HTTP contract's tests depend on them.

use std::time::Duration;

use async_trait::async_trait;
use bgrun_core::{ParamSpec, RunKind, RunTarget};

use crate::context::RunContext;
use crate::registry::Registry;
use crate::runnable::{ComponentInfo, RunFailure, RunOutput, Runnable};
use crate::workflow::{Step, StepInput, Workflow};

fn delay_param() -> ParamSpec {
    ParamSpec::integer(
        "delay_ms",
        0,
        60_000,
        0,
        "pause before each event, in milliseconds",
    )
}

async fn pause(ctx: &RunContext) {
    let delay = ctx.param_i64("delay_ms").unwrap_or(0);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
}

/// Agent `echo`: one `RunContent` per whitespace-separated word of the message.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

#[async_trait]
impl Runnable for Echo {
    fn info(&self) -> ComponentInfo {
        ComponentInfo::new(RunKind::Agent, "echo")
            .description("Streams the message back, one word per event.")
            .param(delay_param())
    }

    async fn run(&self, ctx: RunContext) -> Result<RunOutput, RunFailure> {
        let words: Vec<&str> = ctx.input().split_whitespace().collect();
        for (position, word) in words.iter().enumerate() {
            pause(&ctx).await;
            if position + 1 < words.len() {
                ctx.emit_content(&format!("{word} ")).await?;
            } else {
                ctx.emit_content(word).await?;
            }
        }
        Ok(RunOutput::content(words.join(" ")))
    }
}

/// Agent `ticker`: `count` events `tick <i>`, then `done <count>`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ticker;

#[async_trait]
impl Runnable for Ticker {
    fn info(&self) -> ComponentInfo {
        ComponentInfo::new(RunKind::Agent, "ticker")
            .description("Emits `count` numbered ticks.")
            .param(ParamSpec::integer(
                "count",
                0,
                10_000_000,
                10,
                "how many ticks",
            ))
            .param(delay_param())
    }

    async fn run(&self, ctx: RunContext) -> Result<RunOutput, RunFailure> {
        let count = ctx.param_i64("count").unwrap_or(10);
        for tick in 0..count {
            pause(&ctx).await;
            ctx.emit_content(&format!("tick {tick}")).await?;
        }
        Ok(RunOutput::content(format!("done {count}")))
    }
}

/// Agent `fail`: ends `ERROR` ("failed on purpose") after `delay_ms`, or panics with `panic`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fail;

#[async_trait]
impl Runnable for Fail {
    fn info(&self) -> ComponentInfo {
        ComponentInfo::new(RunKind::Agent, "fail")
            .description("Fails on purpose, or panics.")
            .param(delay_param())
            .param(ParamSpec::boolean(
                "panic",
                false,
                "panic instead of failing",
            ))
    }

    async fn run(&self, ctx: RunContext) -> Result<RunOutput, RunFailure> {
        pause(&ctx).await;
        if ctx.param_bool("panic").unwrap_or(false) {
            panic!("panicked on purpose");
        }
        Err(RunFailure::new("failed on purpose"))
    }
}

fn count_param() -> ParamSpec {
    ParamSpec::integer("count", 0, 10_000_000, 10, "ticks of the ticker members")
}

/// Team `pair`: runs `echo` on the message, then `ticker`, as member runs whose events it
/// forwards; its own content is the members' outputs, one line each.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pair;

#[async_trait]
impl Runnable for Pair {
    fn info(&self) -> ComponentInfo {
        ComponentInfo::new(RunKind::Team, "pair")
            .description("Runs the echo and ticker agents as members, one after the other.")
            .param(count_param())
            .param(delay_param())
    }

    async fn run(&self, ctx: RunContext) -> Result<RunOutput, RunFailure> {
        let mut lines = Vec::new();
        for member in ["echo", "ticker"] {
            let target = RunTarget::new(RunKind::Agent, member);
            let run = ctx
                .run_child(target, ctx.input(), ctx.params().clone())
                .await?;
            lines.push(format!("{member}: {}", run.content.unwrap_or_default()));
        }
        ctx.emit_content(&lines.join("\n")).await?;
        Ok(RunOutput::default())
    }
}

/// Workflow `pipeline`: `research` (parallel `web` and `deep`, each a `ticker`), `analysis`
/// (`echo` of the message), then `report`.
pub fn pipeline() -> Workflow {
    let info = ComponentInfo::new(RunKind::Workflow, "pipeline")
        .description("Parallel research, then analysis, then a report.")
        .param(count_param())
        .param(delay_param());
    Workflow::new(
        info,
        vec![
            Step::parallel(
                "research",
                vec![Step::agent("web", "ticker"), Step::agent("deep", "ticker")],
            ),
            Step::agent("analysis", "echo").on_message(),
            Step::function("report", |_ctx, input: StepInput| async move {
                let research = input.outputs.get("research").cloned().unwrap_or_default();
                Ok(format!(
                    "Report on {:?}\n{research}\nanalysis: {}",
                    input.message, input.previous
                ))
            }),
        ],
    )
}

/// A registry holding every demo component.
pub fn registry() -> Registry {
    Registry::new()
        .with(Echo)
        .with(Ticker)
        .with(Fail)
        .with(Pair)
        .with(pipeline())
}
