//! Moving one slot from its master to another, keys included, the way `redis-cli --cluster
//! reshard` does it: the clients of the cluster meet `ASK` while the keys move and `MOVED`
//! afterwards, and shards drop the sharded subscriptions of the slot.

use anyhow::Context as _;

use super::{topology, RedisCluster};

/// Keys moved per `MIGRATE`.
const BATCH: usize = 100;

/// How long one `MIGRATE` may take, in milliseconds.
const MIGRATE_TIMEOUT_MS: u32 = 5000;

impl RedisCluster {
    /// Moves `slot`, with its keys, from the master serving it to the master on `to_port`.
    pub async fn move_slot(&self, slot: u32, to_port: u16) -> anyhow::Result<()> {
        let nodes: String = self.ask_any(redis::cmd("CLUSTER").arg("NODES")).await?;
        let view = topology::parse(&nodes)?;
        let source = topology::owner(&view, slot)
            .with_context(|| format!("no master serves slot {slot}"))?
            .clone();
        let target = view
            .iter()
            .find(|m| m.port == to_port && m.is_master())
            .with_context(|| format!("no master on port {to_port}"))?
            .clone();
        anyhow::ensure!(
            source.port != target.port,
            "slot {slot} is on :{to_port} already"
        );
        let member = |port: u16| {
            self.members
                .iter()
                .find(|m| m.port == port && !m.killed)
                .with_context(|| format!("no running member on port {port}"))
        };
        let (from, to) = (member(source.port)?, member(target.port)?);
        let setslot = |state: &str, id: &str| {
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("SETSLOT").arg(slot).arg(state).arg(id);
            cmd
        };
        to.query::<()>(&setslot("IMPORTING", &source.id)).await?;
        from.query::<()>(&setslot("MIGRATING", &target.id)).await?;
        loop {
            let keys: Vec<String> = from
                .query(
                    redis::cmd("CLUSTER")
                        .arg("GETKEYSINSLOT")
                        .arg(slot)
                        .arg(BATCH),
                )
                .await?;
            if keys.is_empty() {
                break;
            }
            from.query::<()>(
                redis::cmd("MIGRATE")
                    .arg("127.0.0.1")
                    .arg(target.port)
                    .arg("")
                    .arg(0)
                    .arg(MIGRATE_TIMEOUT_MS)
                    .arg("KEYS")
                    .arg(&keys),
            )
            .await
            .with_context(|| format!("migrating {} keys of slot {slot}", keys.len()))?;
        }
        // The new owner first, then the old one, then everyone else (as redis-cli does).
        to.query::<()>(&setslot("NODE", &target.id)).await?;
        from.query::<()>(&setslot("NODE", &target.id)).await?;
        for other in self
            .members
            .iter()
            .filter(|m| !m.killed && m.port != from.port && m.port != to.port)
        {
            // Replicas refuse SETSLOT; they learn from their masters.
            let _ = other.query::<()>(&setslot("NODE", &target.id)).await;
        }
        Ok(())
    }
}
