//! What the demo prints: each step's number, name and time, what it does, and its check.

use std::process::ExitCode;
use std::time::Instant;

use super::interrupt::Interrupted;

/// The printed record: each step's number, name and start time since the demo began, what it
/// did, and its check's outcome with its duration.
#[derive(Debug)]
pub struct Transcript {
    start: Instant,
    step: usize,
    title: &'static str,
    step_start: Instant,
    figures: Vec<String>,
}

impl Transcript {
    pub fn new() -> Transcript {
        let now = Instant::now();
        Transcript {
            start: now,
            step: 0,
            title: "start",
            step_start: now,
            figures: Vec::new(),
        }
    }

    fn stamp(&self) -> String {
        format!("[{:>6.2}s]", self.start.elapsed().as_secs_f64())
    }

    pub fn begin(&mut self, title: &'static str) {
        self.step += 1;
        self.title = title;
        self.step_start = Instant::now();
        println!("{} {}. {title}", self.stamp(), self.step);
    }

    /// A line of what the step does or sees, indented under it.
    pub fn say(&self, text: impl AsRef<str>) {
        for line in text.as_ref().lines() {
            println!("            {line}");
        }
    }

    /// A line with its own time stamp, for what happens during a long step.
    pub fn event(&self, text: impl AsRef<str>) {
        println!("{}    {}", self.stamp(), text.as_ref());
    }

    pub fn ok(&self, summary: impl AsRef<str>) {
        println!(
            "{}    ok: {} ({:.2}s)",
            self.stamp(),
            summary.as_ref(),
            self.step_start.elapsed().as_secs_f64()
        );
    }

    /// A figure for the closing summary.
    pub fn figure(&mut self, text: String) {
        self.figures.push(text);
    }

    pub fn finish(&self, result: anyhow::Result<()>) -> ExitCode {
        let total = self.start.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                println!(
                    "{} demo passed: {} steps ok in {total:.1}s",
                    self.stamp(),
                    self.step
                );
                for figure in &self.figures {
                    println!("            {figure}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                if let Some(Interrupted(signal)) = e.downcast_ref::<Interrupted>() {
                    println!(
                        "{} demo {e} during step {} ({}); everything it created was removed",
                        self.stamp(),
                        self.step,
                        self.title
                    );
                    return ExitCode::from(128 + *signal as u8);
                }
                println!(
                    "{} demo FAILED at step {} ({}): {e:#}",
                    self.stamp(),
                    self.step,
                    self.title
                );
                ExitCode::FAILURE
            }
        }
    }
}
