//! One member's view of a Redis Cluster, parsed from `CLUSTER NODES`, and the checks the
//! harness waits on: is the cluster whole, and who serves a slot.
//!
//! `CLUSTER NODES` (rather than `CLUSTER SHARDS`) because it exists in every Redis with
//! cluster support and is one line per member, which is easy to parse and to show in an error
//! message: `<id> <ip:port@bus[,host]> <flags> <master id|-> <ping> <pong> <epoch> <link>
//! <slot ranges...>`.

use anyhow::{bail, Context as _};

/// Number of hash slots in every Redis Cluster.
pub const SLOTS: u32 = 16384;

/// One line of `CLUSTER NODES`: a member as another member (or itself) sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    /// The member's node id (40 hex characters).
    pub(crate) id: String,
    /// Its client port; 0 while its address is unknown (`noaddr`).
    pub(crate) port: u16,
    /// Its flags: `myself`, `master`, `slave`, `fail?`, `fail`, `handshake`, `noaddr`, ….
    pub(crate) flags: Vec<String>,
    /// The id of its master, for a replica.
    pub(crate) master_id: Option<String>,
    /// Whether the cluster-bus link to it is up.
    pub(crate) connected: bool,
    /// The slot ranges it serves, inclusive; slots being migrated (`[..]`) are left out.
    pub(crate) slots: Vec<(u32, u32)>,
}

// === impl Member ===

impl Member {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// Whether it is a master (failed or not).
    pub(crate) fn is_master(&self) -> bool {
        self.has_flag("master")
    }

    /// Whether it is suspected (`fail?`) or known (`fail`) to have failed, or not yet a
    /// full member (`handshake`, `noaddr`).
    pub(crate) fn is_unhealthy(&self) -> bool {
        ["fail", "fail?", "handshake", "noaddr"]
            .iter()
            .any(|flag| self.has_flag(flag))
    }

    /// Whether it serves `slot`.
    pub(crate) fn serves(&self, slot: u32) -> bool {
        self.slots
            .iter()
            .any(|(first, last)| (*first..=*last).contains(&slot))
    }
}

/// Parses the whole reply of `CLUSTER NODES`.
pub(crate) fn parse(reply: &str) -> anyhow::Result<Vec<Member>> {
    reply
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| parse_line(line).with_context(|| format!("CLUSTER NODES line {line:?}")))
        .collect()
}

fn parse_line(line: &str) -> anyhow::Result<Member> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 8 {
        bail!("expected at least 8 fields, got {}", fields.len());
    }
    // `127.0.0.1:7001@17001` or `127.0.0.1:7001@17001,hostname`; `:0@0` without an address.
    let client_addr = fields[1].split('@').next().unwrap_or_default();
    let port = client_addr
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .context("no client port in the address")?;
    let mut slots = Vec::new();
    for range in fields[8..].iter().filter(|range| !range.starts_with('[')) {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        slots.push((
            first.parse().context("slot range start")?,
            last.parse().context("slot range end")?,
        ));
    }
    Ok(Member {
        id: fields[0].to_owned(),
        port,
        flags: fields[2].split(',').map(str::to_owned).collect(),
        master_id: Some(fields[3]).filter(|id| *id != "-").map(str::to_owned),
        connected: fields[7] == "connected",
        slots,
    })
}

/// `Ok` when the view shows a whole cluster: `masters` healthy masters serving all
/// [`SLOTS`] between them, each with `replicas` healthy, connected replicas, and nobody
/// else. Otherwise what is missing, for the error message of whoever waits.
pub(crate) fn check_whole(view: &[Member], masters: usize, replicas: usize) -> Result<(), String> {
    if let Some(member) = view.iter().find(|m| m.is_unhealthy() || !m.connected) {
        return Err(format!(
            "member {} (port {}) is {} ({})",
            member.id,
            member.port,
            member.flags.join(","),
            if member.connected {
                "connected"
            } else {
                "disconnected"
            }
        ));
    }
    let serving: Vec<&Member> = view
        .iter()
        .filter(|m| m.is_master() && !m.slots.is_empty())
        .collect();
    if serving.len() != masters || view.len() != masters * (1 + replicas) {
        return Err(format!(
            "{} members, {} of them masters with slots; want {} and {masters}",
            view.len(),
            serving.len(),
            masters * (1 + replicas)
        ));
    }
    let covered: u32 = serving
        .iter()
        .flat_map(|m| &m.slots)
        .map(|(first, last)| last - first + 1)
        .sum();
    if covered != SLOTS {
        return Err(format!("{covered} of {SLOTS} slots assigned"));
    }
    for master in serving {
        let attached = view
            .iter()
            .filter(|m| m.master_id.as_deref() == Some(master.id.as_str()))
            .count();
        if attached != replicas {
            return Err(format!(
                "master on port {} has {attached} replicas, want {replicas}",
                master.port
            ));
        }
    }
    Ok(())
}

/// The healthy master serving `slot` in this view, if there is one.
pub(crate) fn owner(view: &[Member], slot: u32) -> Option<&Member> {
    view.iter()
        .find(|m| m.is_master() && !m.is_unhealthy() && m.serves(slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real reply of a 3 + 3 cluster (ids shortened).
    const WHOLE: &str = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
a2 127.0.0.1:7002@17002 master - 0 1700000000000 2 connected 5461-10922
a3 127.0.0.1:7003@17003,host master - 0 1700000000000 3 connected 10923-16383
b1 127.0.0.1:7004@17004 slave a1 0 1700000000000 1 connected
b2 127.0.0.1:7005@17005 slave a2 0 1700000000000 2 connected
b3 127.0.0.1:7006@17006 slave a3 0 1700000000000 3 connected
";

    #[test]
    fn parse_reads_ports_roles_and_slots() {
        let view = parse(WHOLE).unwrap();
        assert_eq!(view.len(), 6);
        assert_eq!(
            view[2].port, 7003,
            "a hostname after the bus port is ignored"
        );
        assert!(view[0].is_master() && !view[3].is_master());
        assert_eq!(view[3].master_id.as_deref(), Some("a1"));
        assert_eq!(view[0].slots, [(0, 5460)]);
        assert!(view[3].slots.is_empty());
    }

    #[test]
    fn parse_skips_migrating_slots_and_reads_single_ones() {
        let view = parse("x 127.0.0.1:1@2 master - 0 0 1 connected 5 7-9 [10->-y]\n").unwrap();
        assert_eq!(view[0].slots, [(5, 5), (7, 9)]);
    }

    #[test]
    fn a_whole_cluster_passes_and_the_owner_is_found() {
        let view = parse(WHOLE).unwrap();
        assert_eq!(check_whole(&view, 3, 1), Ok(()));
        assert_eq!(owner(&view, 6000).map(|m| m.port), Some(7002));
        assert_eq!(owner(&view, 16383).map(|m| m.port), Some(7003));
    }

    #[test]
    fn a_failed_master_is_neither_whole_nor_an_owner() {
        let failed = WHOLE.replace(
            "a2 127.0.0.1:7002@17002 master - 0 1700000000000 2 connected",
            "a2 127.0.0.1:7002@17002 master,fail - 0 1700000000000 2 disconnected",
        );
        let view = parse(&failed).unwrap();
        assert!(check_whole(&view, 3, 1).unwrap_err().contains("7002"));
        assert_eq!(owner(&view, 6000), None);
    }

    #[test]
    fn a_master_without_its_replica_is_not_whole() {
        let view = parse(&WHOLE.replace("slave a3", "slave a1")).unwrap();
        let problem = check_whole(&view, 3, 1).unwrap_err();
        assert!(problem.contains("2 replicas"), "{problem}");
    }
}
