//! The cluster console: the page at `/` and its event stream at `/admin/stream`.

use std::time::Duration;

use serde_json::Value;

use crate::support::{client, patience, settings, spread, MockBackend, TestBalancer};

/// A console connected to `/admin/stream`, reading its server-sent events.
struct Console {
    response: reqwest::Response,
    /// Bytes received and not yet parsed into an event.
    buf: String,
}

impl Console {
    /// Connects and checks the stream's content type.
    async fn open(balancer: &TestBalancer) -> Self {
        // Not `client()`: its overall timeout would cut the endless stream.
        let response = reqwest::get(format!("http://{}/admin/stream", balancer.admin_addr))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self {
            response,
            buf: String::new(),
        }
    }

    /// The next event: its name and its JSON data.
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..end + 2).collect();
                let field = |name: &str| {
                    event
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .unwrap_or_else(|| panic!("no `{name}` in {event:?}"))
                        .to_owned()
                };
                let data = serde_json::from_str(&field("data: ")).unwrap();
                return (field("event: "), data);
            }
            let chunk = tokio::time::timeout(patience(), self.response.chunk())
                .await
                .expect("an event within the patience")
                .unwrap()
                .expect("the stream stays open");
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The data of the next event called `name`, skipping others (snapshots come every
    /// second, so the patience bounds the whole search, not each event).
    async fn next_named(&mut self, name: &str) -> Value {
        let search = async {
            loop {
                let (event, data) = self.next().await;
                if event == name {
                    return data;
                }
            }
        };
        tokio::time::timeout(patience(), search)
            .await
            .unwrap_or_else(|_| panic!("no `{name}` event within {:?}", patience()))
    }
}

/// The row of node `id` in `snapshot`.
fn row<'a>(snapshot: &'a Value, id: &str) -> &'a Value {
    snapshot["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("no node {id} in {snapshot}"))
}

/// The value of the unlabelled metric `name` in `/metrics`.
async fn metric(balancer: &TestBalancer, name: &str) -> f64 {
    let text = balancer.admin_text("/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_page_is_self_contained_html_with_the_test_contract() {
    let a = MockBackend::start("a").await;
    let balancer = TestBalancer::start(settings(&[&a])).await;

    let response = client()
        .get(format!("http://{}/", balancer.admin_addr))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let page = response.text().await.unwrap();
    for contract in [
        r#"<table id="nodes">"#,
        r#"id="node-count""#,
        r#"<ol id="events">"#,
        r#"id="strategies""#,
        r#"id="connection""#,
        // The row attributes, set from the stream's fields.
        "tr.dataset.nodeId = id",
        "tr.dataset.healthy = String(n.healthy)",
        "tr.dataset.status = n.status",
        "tr.dataset.breaker = n.breaker",
        r#"badge.textContent = live ? "live""#,
        r#"new EventSource("admin/stream")"#,
    ] {
        assert!(page.contains(contract), "the page lacks {contract}");
    }
    // Nothing from elsewhere: the only absolute URL is the SVG namespace, which is a name.
    let absolute = page.matches("http://").count() + page.matches("https://").count();
    assert_eq!(absolute, page.matches("http://www.w3.org/2000/svg").count());
    assert!(
        !page.contains(" src="),
        "no scripts, images or frames to fetch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_lists_every_node_with_state_load_rate_and_latency() {
    let a = MockBackend::start("a").await;
    let b = MockBackend::start("b").await;
    let balancer = TestBalancer::start(settings(&[&a, &b])).await;
    let mut console = Console::open(&balancer).await;

    let hello = console.next_named("hello").await;
    assert_eq!(hello["node_count"], 2);
    assert_eq!(hello["strategies"]["http"], "round-robin");
    assert_eq!(hello["strategies"]["ws"], "least-connections");
    assert_eq!(hello["retry"]["budget_ratio"], 0.2);
    assert_eq!(hello["retry"]["max_attempts"], 3);
    let joined: Vec<&Value> = hello["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "joined")
        .map(|e| &e["node"])
        .collect();
    assert_eq!(joined, ["a", "b"]);
    let first = row(&hello, "a");
    assert_eq!(first["addr"], a.addr.to_string());
    assert_eq!(first["zone"], "", "static upstreams have no zone");
    assert_eq!(first["status"], "ready");
    assert_eq!(first["healthy"], true);
    assert_eq!(first["breaker"], "closed");
    assert_eq!(first["in_flight"], 0);
    assert_eq!(first["ws_connections"], 0);
    assert!(first["history"]["rate"].is_array());

    // Traffic shows as a rate and a p99 in a following snapshot.
    spread(&client(), &balancer.url("/pets"), 40).await;
    let snapshot = loop {
        let snapshot = console.next_named("snapshot").await;
        if row(&snapshot, "a")["rate"].as_f64().unwrap_or(0.0) > 0.0 {
            break snapshot;
        }
    };
    let a_row = row(&snapshot, "a");
    assert!(a_row["p99_ms"].as_f64().unwrap() > 0.0, "{a_row}");
    assert_eq!(a_row["error_ratio"], 0.0);
    assert!(a_row.get("history").is_none(), "history only in hello");
    assert!(snapshot.get("events").is_none(), "events only in hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_goes_unhealthy_is_an_event_and_unhealthy_in_the_next_snapshot() {
    let a = MockBackend::start("a").await;
    let b = MockBackend::start("b").await;
    let balancer = TestBalancer::start(settings(&[&a, &b])).await;
    let mut console = Console::open(&balancer).await;
    assert_eq!(
        row(&console.next_named("hello").await, "b")["healthy"],
        true
    );

    b.kill();

    let event = console.next_named("membership").await;
    assert_eq!(event["node"], "b");
    assert_eq!(event["kind"], "unhealthy");
    let snapshot = console.next_named("snapshot").await;
    assert_eq!(row(&snapshot, "b")["healthy"], false);
    assert_eq!(row(&snapshot, "a")["healthy"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_fifty_nodes() {
    let mut backends = Vec::new();
    for i in 0..50 {
        backends.push(MockBackend::start(&format!("node-{i:02}")).await);
    }
    let mut settings = settings(&backends.iter().collect::<Vec<_>>());
    // Fifty nodes probed ten times a second would be most of this test's work.
    settings.health.interval_ms = 1_000;
    let balancer = TestBalancer::start(settings).await;
    let mut console = Console::open(&balancer).await;

    for name in ["hello", "snapshot"] {
        let snapshot = console.next_named(name).await;
        assert_eq!(snapshot["node_count"], 50);
        let ids: Vec<String> = snapshot["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .collect();
        let expected: Vec<String> = (0..50).map(|i| format!("node-{i:02}")).collect();
        assert_eq!(ids, expected, "{name}: one row per node, sorted by id");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_sampled_while_no_console_is_connected() {
    let a = MockBackend::start("a").await;
    let balancer = TestBalancer::start(settings(&[&a])).await;
    let snapshots = "petmesh_balancer_console_snapshots_total";
    let clients = "petmesh_balancer_console_clients";
    let tick = Duration::from_secs(1);

    tokio::time::sleep(tick + tick / 2).await;
    assert_eq!(metric(&balancer, snapshots).await, 0.0, "no console yet");

    let mut console = Console::open(&balancer).await;
    console.next_named("hello").await;
    console.next_named("snapshot").await;
    assert_eq!(metric(&balancer, clients).await, 1.0);
    assert!(metric(&balancer, snapshots).await >= 2.0);

    drop(console);
    crate::support::eventually("the console is gone", || async {
        let open = metric(&balancer, clients).await;
        (open == 0.0).then_some(()).ok_or(format!("{open} open"))
    })
    .await;
    // The sampler stops at its first tick without a console (a second at most; twice that
    // leaves room for a busy machine).
    tokio::time::sleep(tick * 2).await;
    let stopped_at = metric(&balancer, snapshots).await;
    tokio::time::sleep(tick * 2).await;
    assert_eq!(metric(&balancer, snapshots).await, stopped_at);
}
