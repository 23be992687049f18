//! The "Complete Example" of Agno's workflow background execution guide, in Rust: parallel web
//! and deep research, then analysis, then a report, started in the background and polled to
//! completion. The model calls are deterministic stand-ins, so it runs anywhere.
//!
//! `cargo run -p bgrun --example workflow_background`

use std::time::Duration;

use bgrun::workflow::{Step, Workflow};
use bgrun::{
    ComponentInfo, Registry, RunContext, RunFailure, RunKind, RunOutput, RunTarget, Runnable,
    StartRequest,
};

/// Stands in for an LLM agent: streams a deterministic answer word by word, as a model would.
struct StandInAgent {
    id: &'static str,
    name: &'static str,
    instructions: &'static str,
}

#[bgrun::async_trait]
impl Runnable for StandInAgent {
    fn info(&self) -> ComponentInfo {
        ComponentInfo::new(RunKind::Agent, self.id)
            .description(self.instructions)
            .named(self.name)
    }

    async fn run(&self, ctx: RunContext) -> Result<RunOutput, RunFailure> {
        // What it was given, quoted below its own line: the report shows the whole chain.
        let quoted: Vec<String> = ctx
            .input()
            .lines()
            .map(|line| format!("  | {line}"))
            .collect();
        let answer = format!(
            "[{}] {}\n{}",
            self.name,
            self.instructions,
            quoted.join("\n")
        );
        for word in answer.split_inclusive(' ') {
            tokio::time::sleep(Duration::from_millis(15)).await; // "thinking"
            ctx.emit_content(word).await?;
        }
        Ok(RunOutput::content(answer))
    }
}

fn agents() -> [StandInAgent; 4] {
    [
        StandInAgent {
            id: "web-researcher",
            name: "Web Researcher",
            instructions: "Research current events and news.",
        },
        StandInAgent {
            id: "deep-researcher",
            name: "Deep Researcher",
            instructions: "Find authoritative, in-depth sources.",
        },
        StandInAgent {
            id: "analyst",
            name: "Analyst",
            instructions: "Analyze and synthesize research findings.",
        },
        StandInAgent {
            id: "reporter",
            name: "Reporter",
            instructions: "Write comprehensive, well-structured reports.",
        },
    ]
}

fn comprehensive_research() -> Workflow {
    let info = ComponentInfo::new(RunKind::Workflow, "comprehensive-research")
        .named("Comprehensive Research")
        .description("Multi-source research with analysis and reporting");
    Workflow::new(
        info,
        vec![
            Step::parallel(
                "Research Phase",
                vec![
                    Step::agent("Web Research", "web-researcher"),
                    Step::agent("Deep Research", "deep-researcher"),
                ],
            ),
            Step::agent("Analysis", "analyst"),
            Step::agent("Report", "reporter"),
        ],
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut registry = Registry::new().with(comprehensive_research());
    for agent in agents() {
        registry.register(agent);
    }
    let engine = bgrun::open_sqlite(dir.path().join("background_demo.db"), registry).await?;

    println!("{}", "=".repeat(50));
    println!("Background Execution Demo");
    println!("{}", "=".repeat(50));

    println!("\n1. Starting background workflow...");
    let target = RunTarget::new(RunKind::Workflow, "comprehensive-research");
    let started = engine
        .start(StartRequest::new(
            target,
            "Analyze the current state and future of quantum computing",
        ))
        .await?;
    let run_id = started.run.run_id;
    println!("   Run ID: {run_id}");
    println!("   Status: {}", started.run.status);

    println!("\n2. Doing other work while workflow runs...");
    for task in 1..=3 {
        println!("   Working on other task {task}...");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    println!("\n3. Polling for completion...");
    let mut delay = Duration::from_millis(50);
    for poll in 1..=60 {
        let Some(run) = engine.get_run(&run_id).await? else {
            println!("   [{poll}] Initializing...");
            continue;
        };
        println!("   [{poll}] Status: {}", run.status);
        if run.has_completed() {
            if let Some(error) = &run.error {
                println!("\n4. Workflow failed!\n   Error: {error}");
            } else {
                println!("\n4. Workflow completed!");
                println!("{}\nRESULT:\n{}", "=".repeat(50), "=".repeat(50));
                println!("{}", run.content.unwrap_or_default());
            }
            let children = engine
                .list_runs(
                    &bgrun::RunFilter {
                        parent_run_id: Some(run_id.clone()),
                        ..Default::default()
                    },
                    10,
                    None,
                )
                .await?;
            println!("\n   (step runs: {})", children.runs.len());
            engine.shutdown(Duration::from_secs(5)).await;
            return Ok(());
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(400)); // exponential backoff
    }
    println!("\n4. Timeout - workflow took too long");
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
