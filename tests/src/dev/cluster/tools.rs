//! `petmesh-node` run as a tool by `petmesh-dev cluster`: `migrate` and `seed` to completion,
//! and whether the binary has a subcommand at all.

use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use super::{OUTPUT_DRAIN, TOOL_TIMEOUT};
use crate::node::{node_binary, NodeConfig};
use crate::process::{capture_lines, log, wait_timeout_async, LogTail};

/// Runs `petmesh-node <subcommand>` to completion with the cluster's configuration, its
/// output shown on stderr prefixed with `[<subcommand>]`.
pub(super) async fn run_tool(template: &NodeConfig, subcommand: &str) -> anyhow::Result<()> {
    let mut cmd = template.clone().id(subcommand).command(subcommand)?;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running petmesh-node {subcommand}"))?;
    let logs = LogTail::new(1);
    let mut readers = Vec::new();
    for output in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let prefix = subcommand.to_owned();
        let reader = capture_lines(output, logs.clone(), move |line| {
            eprintln!("[{prefix}] {}", log::render(line));
        })
        .context("starting an output reader")?;
        readers.push(reader);
    }
    let status = wait_timeout_async(&mut child, TOOL_TIMEOUT).await?;
    // Its last lines (often the error) should appear before whatever we print next.
    for reader in &readers {
        reader.wait(OUTPUT_DRAIN);
    }
    match status {
        Some(status) if status.success() => Ok(()),
        Some(status) => bail!("petmesh-node {subcommand} failed ({status})"),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("petmesh-node {subcommand} did not finish within {TOOL_TIMEOUT:?}")
        }
    }
}

/// Whether `petmesh-node --help` lists `name` as a subcommand.
pub(super) fn node_has_subcommand(name: &str) -> anyhow::Result<bool> {
    let binary = node_binary()?;
    let output = Command::new(&binary)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --help", binary.display()))?;
    Ok(lists_subcommand(
        &String::from_utf8_lossy(&output.stdout),
        name,
    ))
}

/// Whether clap-style help text has a line starting with `name` as a word (the
/// `Commands:` section), which a mere mention elsewhere doesn't.
fn lists_subcommand(help: &str, name: &str) -> bool {
    help.lines().any(|line| {
        line.trim_start()
            .strip_prefix(name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELP: &str = "\
The petmesh API node

Usage: petmesh-node <COMMAND>

Commands:
  serve    Serve the API (the seed data is loaded by `seeded` fixtures)
  migrate  Apply database migrations
  help     Print this message
";

    #[test]
    fn lists_subcommand_finds_only_real_subcommands() {
        assert!(lists_subcommand(HELP, "serve"));
        assert!(lists_subcommand(HELP, "migrate"));
        assert!(!lists_subcommand(HELP, "seed"));
        assert!(!lists_subcommand(HELP, "se"));
        assert!(lists_subcommand(
            &format!("{HELP}  seed     Load demo data\n"),
            "seed"
        ));
    }
}
