//! `ferry errors`: the error catalogue for people and for the control plane.

use serde::Serialize;

use crate::job::errors::{catalogue_markdown, ErrorCode, JobEffect, Retry};

/// Arguments of `ferry errors`.
#[derive(Debug, clap::Args)]
pub struct ErrorsArgs {
    /// Print the catalogue as JSON instead of a table.
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// Print the catalogue as the Markdown page docs/errors.md.
    #[arg(long)]
    pub markdown: bool,
}

#[derive(Serialize)]
struct Entry {
    code: &'static str,
    message: &'static str,
    hint: &'static str,
    retry: Retry,
    job: JobEffect,
    /// `ferry send`'s exit status when it stops with this code.
    exit: u8,
}

/// `ferry errors`: print every code with its message and hint.
pub fn run(args: &ErrorsArgs) -> anyhow::Result<()> {
    let entries: Vec<Entry> = ErrorCode::ALL
        .iter()
        .map(|c| Entry {
            code: c.as_str(),
            message: c.message(),
            hint: c.hint(),
            retry: c.retry(),
            job: c.job_effect(),
            exit: c.exit().status(),
        })
        .collect();
    if args.markdown {
        print!("{}", catalogue_markdown());
    } else if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        for e in entries {
            println!(
                "{}\n  {}\n  hint: {}\n  `ferry send` exits with status {}\n",
                e.code, e.message, e.hint, e.exit
            );
        }
    }
    Ok(())
}
