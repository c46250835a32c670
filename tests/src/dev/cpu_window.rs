//! `petmesh-dev cpu-window`: runs a command (a load generator such as `wrk`) and reports the
//! CPU time that named groups of processes used while it ran, for `scripts/bench-scale`.
//!
//! 1. Sample every group (each root with its descendants, see [`ProcessGroup`]), the whole
//!    machine's busy time, and the ticks of the children this process has reaped.
//! 2. Run the command with inherited stdout and stderr, and wait for it (reaping it).
//! 3. Sample again. The command's CPU time is the growth of this process's reaped-children
//!    ticks: it is our only child, so that is exactly what it and whatever it reaped used.
//! 4. Print one `result key=value ...` line on stdout after the command's own output:
//!    `window_s`, `<group>_cpu_s` per group, `command_cpu_s`, `machine_cpu_s`,
//!    `other_cpu_s` (the machine's busy time that neither a group nor the command accounts
//!    for: other processes on a shared machine, interrupts, this process's sampling), and
//!    `interrupts_cpu_s`, the part of that spent in interrupts and softirqs (see
//!    [`CpuSeconds::interrupts`](super::fanout::procfs::CpuSeconds)).
//!
//! The window is the command's whole run, so a load generator should measure a fixed
//! duration itself and start its warm-up separately.

use std::ffi::OsString;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _};

use super::fanout::procfs::{reaped_children_ticks, CpuProbe, ProcessGroup};
use crate::process::kill_with_parent;

/// Options of `petmesh-dev cpu-window`.
#[derive(clap::Args, Clone, Debug)]
pub struct CpuWindowArgs {
    /// A group of processes measured together with their descendants, `name=pid[,pid...]`;
    /// repeat for several. Reported as `<name>_cpu_s`.
    #[arg(long = "group", required = true)]
    pub groups: Vec<ProcessGroup>,
    /// The command and its arguments (put `--` before it).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<OsString>,
}

/// Runs the command between two samples and prints the `result` line; returns the
/// command's exit code (the line is printed in any case, the script decides).
pub async fn run(args: CpuWindowArgs) -> anyhow::Result<i32> {
    let mut names: Vec<&str> = args.groups.iter().map(|g| g.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|pair| pair[0] == pair[1]) || names.contains(&"command") {
        bail!("group names must differ from each other and from `command`");
    }
    let probe = CpuProbe::new(&[], &[], &[])?.with_groups(&args.groups)?;
    let (program, rest) = args.command.split_first().context("no command given")?;
    let mut command = Command::new(program);
    command.args(rest);
    // The command is bounded by itself; if we are killed first it goes with us.
    kill_with_parent(&mut command, libc::SIGTERM);
    let me = std::process::id();

    let (before, reaped_before) = (probe.sample()?, reaped_children_ticks(me)?);
    let started = Instant::now();
    // A blocking wait is fine: this command runs on a current-thread runtime with nothing
    // else to do, and the child must be spawned from the thread that outlives it.
    let status = command
        .status()
        .with_context(|| format!("running {}", program.to_string_lossy()))?;
    let window = started.elapsed().as_secs_f64();
    let (after, reaped_after) = (probe.sample()?, reaped_children_ticks(me)?);

    let seconds = probe.seconds_between(&before, &after);
    let command_cpu = probe.ticks_to_seconds(reaped_after.saturating_sub(reaped_before));
    // Rounded to a tick per process, so on a quiet machine this can come out a little below
    // zero; shown as zero.
    let other = (seconds.machine - seconds.groups_total() - command_cpu).max(0.0);
    println!(
        "result window_s={window:.3}{} command_cpu_s={command_cpu:.3} \
         machine_cpu_s={:.3} other_cpu_s={other:.3} interrupts_cpu_s={:.3} exit={}",
        seconds.group_fields(),
        seconds.machine,
        seconds.interrupts,
        status.code().unwrap_or(-1),
    );
    Ok(status.code().unwrap_or(1))
}
