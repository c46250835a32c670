//! A Redis Cluster changing under steady publishing (issue 13, Must show): a master killed
//! (REST writes fail for no longer than the failover, the outbox holding their events
//! meanwhile) and a busy slot moved to another master. Every subscriber ends with every event
//! exactly once, in order — or is told explicitly that some may be missing (`system:resync`,
//! `recovered: false`), never left with a silent gap.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use anyhow::ensure;
use petmesh_shared::registry::RedisKeys;
use petmesh_tests::{servers::SLOTS, ApiClient, TestCluster, TestResponse, WsClient};
use reqwest::Method;
use serde_json::json;
use tokio::sync::oneshot;

use crate::support::until_balanced;

/// Time between two creations: a steady rate of 10 per second.
const PACE: Duration = Duration::from_millis(100);

/// Creations before the master is killed, and how long they go on after the failover.
const BEFORE_KILL: usize = 20;
const AFTER_FAILOVER: Duration = Duration::from_secs(2);

/// How long one creation may take (well past any failover here).
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long Redis may take to promote the replica (cluster-node-timeout is 1 s).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long after the promotion requests may still fail while clients refresh the topology.
const TOPOLOGY_REFRESH: Duration = Duration::from_secs(2);

/// What a subscriber saw of the run.
#[derive(Debug, Default)]
struct Seen {
    /// `pet:created` events: pet name and offset (`<epoch>:<seq>`).
    created: Vec<(String, String)>,
    /// `system:resync` reasons, with how many events had been seen before each.
    resyncs: Vec<(usize, String)>,
}

/// Creates a pet called `name`, answering within [`CREATE_TIMEOUT`].
async fn create_pet(api: &ApiClient, name: &str) -> anyhow::Result<TestResponse> {
    api.send(
        api.request(Method::POST, "/api/v1/pets")
            .json(&json!({"name": name, "category": "dogs", "price": "1.00", "stock": 1}))
            .timeout(CREATE_TIMEOUT),
    )
    .await
}

/// Reads `ws` until the `pet:created` of pet `last`.
async fn read_until(mut ws: WsClient, last: &str) -> Seen {
    let mut seen = Seen::default();
    loop {
        let event = ws.next_event().await.unwrap();
        match event["event"].as_str() {
            Some("pet:created") => {
                let name = event["payload"]["name"].as_str().unwrap().to_owned();
                let offset = event["offset"].as_str().unwrap().to_owned();
                seen.created.push((name.clone(), offset));
                if name == last {
                    return seen;
                }
            }
            Some("system:resync") => {
                assert_eq!(event["payload"]["recovered"], false, "{event}");
                assert_eq!(event["topic"], "pets", "{event}");
                let reason = event["payload"]["reason"].as_str().unwrap().to_owned();
                seen.resyncs.push((seen.created.len(), reason));
            }
            _ => {}
        }
    }
}

/// Splits an offset into epoch and sequence number.
fn offset_parts(offset: &str) -> (&str, u64) {
    let (epoch, seq) = offset.rsplit_once(':').unwrap();
    (epoch, seq.parse().unwrap())
}

/// Checks what one subscriber saw: no event twice; offsets consecutive within each epoch; a
/// new epoch only right after a `system:resync`; every created pet present unless a resync
/// said events may be missing; the commit order of `reference` (what another subscriber saw).
fn check_complete_or_told(
    seen: &Seen,
    created: &[String],
    reference: &[String],
) -> anyhow::Result<()> {
    let names: Vec<&str> = seen.created.iter().map(|(n, _)| n.as_str()).collect();
    let distinct: HashSet<&str> = names.iter().copied().collect();
    ensure!(
        distinct.len() == names.len(),
        "an event came twice: {names:?}"
    );
    for (index, pair) in seen.created.windows(2).enumerate() {
        let ((before_epoch, before_seq), (epoch, seq)) =
            (offset_parts(&pair[0].1), offset_parts(&pair[1].1));
        if epoch == before_epoch {
            ensure!(seq == before_seq + 1, "a gap within an epoch at {pair:?}");
        } else {
            ensure!(
                seen.resyncs.iter().any(|(at, _)| *at == index + 1),
                "a new epoch without a resync at {pair:?} (resyncs {:?})",
                seen.resyncs
            );
        }
    }
    if seen.resyncs.is_empty() {
        let missing: Vec<&String> = created
            .iter()
            .filter(|name| !distinct.contains(name.as_str()))
            .collect();
        ensure!(missing.is_empty(), "silently missing {missing:?}");
    }
    let in_reference: Vec<&str> = reference
        .iter()
        .map(String::as_str)
        .filter(|name| distinct.contains(name))
        .collect();
    let common: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| reference.iter().any(|r| r == name))
        .collect();
    ensure!(
        common == in_reference,
        "not the commit order the others saw"
    );
    Ok(())
}

/// Waits for each reader (one per node) to see the closing event, then checks what it saw with
/// [`check_complete_or_told`], the first reader's order being the reference for the others.
async fn assert_every_subscriber_complete_or_told(
    readers: Vec<tokio::task::JoinHandle<Seen>>,
    created: &[String],
) {
    let mut reference: Option<Vec<String>> = None;
    for (index, reader) in readers.into_iter().enumerate() {
        let who = format!("subscriber on node {index}");
        let seen = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .unwrap_or_else(|_| panic!("{who} never saw the closing event"))
            .unwrap();
        let reference = reference
            .get_or_insert_with(|| seen.created.iter().map(|(name, _)| name.clone()).collect());
        check_complete_or_told(&seen, created, reference)
            .unwrap_or_else(|e| panic!("{who}: {e:#}"));
        let epochs: HashSet<&str> = seen
            .created
            .iter()
            .map(|(_, o)| offset_parts(o).0)
            .collect();
        eprintln!(
            "{who}: {} events in {} epoch(s), {} resync(s) {:?}",
            seen.created.len(),
            epochs.len(),
            seen.resyncs.len(),
            seen.resyncs
        );
    }
}

#[tokio::test]
async fn killing_the_master_of_a_busy_topic_loses_no_event_silently_and_writes_go_on() {
    let mut cluster = TestCluster::builder()
        .nodes(3)
        .balancer(true)
        .own_redis_cluster()
        .start()
        .await;
    until_balanced(&cluster).await;
    let entry = cluster.entry_client();
    let token = entry
        .login("admin", cluster.admin_password())
        .await
        .unwrap()
        .access_token;
    let api = entry.token(&token);
    let mut readers = Vec::new();
    for node in cluster.nodes() {
        let mut ws = WsClient::login(&node.base_url(), &token).await.unwrap();
        ws.subscribe(&["pets"]).await.unwrap();
        readers.push(tokio::spawn(read_until(ws, "after")));
    }

    // A client that leaves before the failover and resumes from its offset afterwards.
    let resumer = {
        let (base, token) = (cluster.node(1).base_url(), token.clone());
        tokio::spawn(async move {
            let mut ws = WsClient::login(&base, &token).await.unwrap();
            ws.subscribe(&["pets"]).await.unwrap();
            let last = ws
                .event_where(|e| e["payload"]["name"] == "steady-010")
                .await
                .unwrap();
            ws.close().await.unwrap();
            last["offset"].as_str().unwrap().to_owned()
        })
    };
    // A steady stream of creations through the balancer, each request on its own so that a
    // slow answer does not slow the pace; it goes on for a while after the failover.
    let (failed_over, mut until_failed_over) = oneshot::channel::<()>();
    let (killing, kill_now) = oneshot::channel::<()>();
    let publisher = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut killing = Some(killing);
            let mut creations = Vec::new();
            let mut pace = tokio::time::interval(PACE);
            let mut stop_at: Option<Instant> = None;
            for i in 0.. {
                pace.tick().await;
                if stop_at.is_none() && until_failed_over.try_recv().is_ok() {
                    stop_at = Some(Instant::now() + AFTER_FAILOVER);
                }
                if stop_at.is_some_and(|at| Instant::now() >= at) {
                    break;
                }
                let (api, name) = (api.clone(), format!("steady-{i:03}"));
                creations.push(tokio::spawn(async move {
                    let started = Instant::now();
                    let created = create_pet(&api, &name).await;
                    (name, created, started, Instant::now())
                }));
                if i + 1 == BEFORE_KILL {
                    if let Some(killing) = killing.take() {
                        let _ = killing.send(());
                    }
                }
            }
            creations
        })
    };

    kill_now.await.unwrap();
    let keys = RedisKeys::new(cluster.cluster_name());
    let redis = cluster.own_redis_cluster();
    let slot = redis.slot(&keys.topic_offsets("pets")).await.unwrap();
    let master = redis.master_for_slot(slot).await.unwrap();
    redis.kill(master.port).unwrap();
    let failover = redis
        .wait_failover(slot, FAILOVER_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("no replica took slot {slot} over: {e:#}"));
    failed_over.send(()).unwrap();
    eprintln!(
        "killed master :{} (slot {slot} of `pets`); replica :{} promoted after {:?}",
        master.port, failover.master.port, failover.elapsed
    );

    let mut created = Vec::new();
    let mut failures: Vec<(String, String, Instant, Instant)> = Vec::new();
    for creation in publisher.await.unwrap() {
        let (name, answer, started, ended) = creation.await.unwrap();
        match answer {
            Ok(response) if response.status == 201 => created.push(name),
            Ok(response) => {
                failures.push((name, format!("status {}", response.status), started, ended))
            }
            Err(err) => failures.push((name, format!("{err:#}"), started, ended)),
        }
    }
    let failing_for = match (failures.first(), failures.last()) {
        (Some(first), Some(last)) => last.3.saturating_duration_since(first.2),
        _ => Duration::ZERO,
    };
    eprintln!(
        "{} pets created at one per {PACE:?}, {} failed ({failing_for:?} from the first failed \
         request's start to the last one's end): {:?}",
        created.len(),
        failures.len(),
        failures
            .iter()
            .map(|(n, why, ..)| (n, why))
            .collect::<Vec<_>>()
    );
    // The clients of the Redis Cluster notice the new master at their next topology refresh:
    // allow them a little past the promotion itself.
    assert!(
        failing_for <= failover.elapsed + TOPOLOGY_REFRESH,
        "writes failed for {failing_for:?}, longer than the failover ({:?})",
        failover.elapsed
    );
    // A last event marks the end for the readers; through a node, retried: right after the
    // failover the balancer may still be catching up with re-registered nodes.
    let node_api = cluster.client(0).token(&token);
    petmesh_tests::eventually("the closing pet is created", || async {
        match create_pet(&node_api, "after").await {
            Ok(response) if response.status == 201 => Ok(()),
            Ok(response) => Err(format!("status {}", response.status)),
            Err(err) => Err(format!("{err:#}")),
        }
    })
    .await;

    // Resuming across the failover: exactly what was missed, or `recovered: false` with why.
    let left_at = resumer.await.unwrap();
    let mut ws = WsClient::login(&cluster.node(1).base_url(), &token)
        .await
        .unwrap();
    let resumed = ws
        .request(
            "subscribe",
            json!({"topics": ["pets"], "since": {"pets": left_at}}),
        )
        .await
        .unwrap();
    let result = resumed.ok()["topics"]["pets"].clone();
    eprintln!("resuming from {left_at} after the failover: {result}");
    if result["recovered"] == true {
        let missed = result["missed"].as_u64().unwrap();
        let mut replayed = Vec::new();
        for _ in 0..missed {
            replayed.push(ws.next_event().await.unwrap()["payload"]["name"].clone());
        }
        let expected: Vec<_> = created
            .iter()
            .skip_while(|name| *name != "steady-010")
            .skip(1)
            .chain(std::iter::once(&"after".to_owned()))
            .map(|name| json!(name))
            .collect();
        assert_eq!(
            replayed, expected,
            "a recovery must replay exactly what was missed"
        );
    } else {
        assert_eq!(result["recovered"], false, "{result}");
        assert!(
            result["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{result}"
        );
    }

    assert_every_subscriber_complete_or_told(readers, &created).await;
}

#[test]
fn a_new_epoch_without_a_resync_is_a_silent_gap() {
    let seen = |resync: bool| Seen {
        created: vec![("a".into(), "e1:1".into()), ("b".into(), "e2:1".into())],
        resyncs: if resync {
            vec![(1, "reset".into())]
        } else {
            vec![]
        },
    };
    let created = vec!["a".to_owned(), "b".to_owned()];
    check_complete_or_told(&seen(true), &created, &created).unwrap();
    assert!(check_complete_or_told(&seen(false), &created, &created).is_err());
}

#[tokio::test]
async fn moving_a_busy_topics_slot_to_another_master_loses_no_event_silently() {
    let mut cluster = TestCluster::builder()
        .nodes(3)
        .own_redis_cluster()
        .start()
        .await;
    let api = cluster.client(0);
    let token = api
        .login("admin", cluster.admin_password())
        .await
        .unwrap()
        .access_token;
    let api = api.token(&token);
    let mut readers = Vec::new();
    for node in cluster.nodes() {
        let mut ws = WsClient::login(&node.base_url(), &token).await.unwrap();
        ws.subscribe(&["pets"]).await.unwrap();
        readers.push(tokio::spawn(read_until(ws, "after")));
    }
    let keys = RedisKeys::new(cluster.cluster_name());
    let redis = cluster.own_redis_cluster();
    let slot = redis.slot(&keys.topic_offsets("pets")).await.unwrap();
    let source = redis.master_for_slot(slot).await.unwrap();
    let mut target = None;
    for other_slot in [0, SLOTS / 2, SLOTS - 1] {
        let master = redis.master_for_slot(other_slot).await.unwrap();
        if master.port != source.port {
            target = Some(master);
            break;
        }
    }
    let target = target.expect("another master");

    // Creations at a steady pace while the slot moves in the middle of them.
    let mut created = Vec::new();
    let mut pace = tokio::time::interval(PACE);
    for i in 0..30 {
        pace.tick().await;
        if i == 10 {
            redis.move_slot(slot, target.port).await.unwrap();
        }
        let name = format!("moving-{i:02}");
        create_pet(&api, &name).await.unwrap().assert_status(201);
        created.push(name);
    }
    let owner = redis.master_for_slot(slot).await.unwrap();
    eprintln!(
        "slot {slot} of `pets` moved from :{} towards :{}, served by :{}",
        source.port, target.port, owner.port
    );
    create_pet(&api, "after").await.unwrap().assert_status(201);
    assert_every_subscriber_complete_or_told(readers, &created).await;
}
