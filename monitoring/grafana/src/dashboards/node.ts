import { NODE, dashboard, q, queryVariable, stat, thresholds, timeseries, valueMap } from '../lib.js';
import type { DashboardJson } from '../schema.js';
import { quantiles } from './common.js';

/** Raw node metrics: the node job and the chosen node. */
const N = `${NODE}, node=~"$node"`;
/** Recording rules keep `node` but not `job`. */
const R = 'node=~"$node"';

export function node(): DashboardJson {
  return dashboard({
    uid: 'petmesh-node',
    title: 'petmesh / Node',
    description: 'One API node in detail: HTTP by route, dependencies, database pool, cache, events and WebSockets.',
    variables: [queryVariable('node', 'Node', 'label_values(petmesh_node_info, node)')],
    rows: [
      {
        title: 'Node $node',
        panels: [
          stat({
            title: 'Version',
            description: 'The version the node runs (petmesh_node_info{version}).',
            unit: 'none',
            queries: [q(`max by (version) (petmesh_node_info{${N}})`, '{{version}}')],
            showName: true,
            w: 4,
            h: 4,
          }),
          stat({
            title: 'Draining',
            description: 'Whether the node is shutting down: it answers /health/ready with 503 and gets no new requests (petmesh_node_draining).',
            unit: 'none',
            queries: [q(`max(petmesh_node_draining{${N}})`, 'draining')],
            mappings: [valueMap([[0, 'serving', 'green'], [1, 'draining', 'blue']])],
            background: true,
            w: 4,
            h: 4,
          }),
          stat({
            title: 'PostgreSQL',
            description: 'Result of the node\'s last periodic PostgreSQL check (petmesh_node_dependency_up{dependency="postgres"}; alert PetmeshPostgresUnreachable).',
            unit: 'none',
            queries: [q(`min(petmesh_node_dependency_up{${N}, dependency="postgres"})`, 'postgres')],
            mappings: [valueMap([[0, 'down', 'red'], [1, 'up', 'green']])],
            background: true,
            w: 4,
            h: 4,
          }),
          stat({
            title: 'Redis',
            description: 'Result of the node\'s last periodic Redis check (petmesh_node_dependency_up{dependency="redis"}; alert PetmeshRedisUnreachable).',
            unit: 'none',
            queries: [q(`min(petmesh_node_dependency_up{${N}, dependency="redis"})`, 'redis')],
            mappings: [valueMap([[0, 'down', 'red'], [1, 'up', 'green']])],
            background: true,
            w: 4,
            h: 4,
          }),
          stat({
            title: 'In-flight requests',
            description: 'HTTP requests the node is handling right now (petmesh_node_http_requests_in_flight).',
            unit: 'none',
            queries: [q(`sum(petmesh_node_http_requests_in_flight{${N}})`, 'in flight')],
            sparkline: true,
            w: 4,
            h: 4,
          }),
          stat({
            title: 'WebSocket connections',
            description: 'WebSocket connections open on the node (petmesh_node_websocket_connections).',
            unit: 'none',
            queries: [q(`sum(petmesh_node_websocket_connections{${N}})`, 'connections')],
            sparkline: true,
            w: 4,
            h: 4,
          }),
        ],
      },
      {
        title: 'HTTP',
        panels: [
          timeseries({
            title: 'Requests by route',
            description: 'Requests per second by route template; "unmatched" is any path no route matches (node_route:petmesh_node_http_requests:rate5m).',
            unit: 'reqps',
            queries: [q(`node_route:petmesh_node_http_requests:rate5m{${R}}`, '{{route}}')],
            stack: true,
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Responses by status',
            description: 'Responses per second by HTTP status code (petmesh_node_http_requests_total).',
            unit: 'reqps',
            queries: [q(`sum by (status) (rate(petmesh_node_http_requests_total{${N}}[$__rate_interval]))`, '{{status}}')],
            stack: true,
            w: 12,
            h: 8,
          }),
          timeseries({
            title: '5xx ratio by route',
            description:
              'Share of each route\'s requests answered 5xx over 5 minutes, and of all the node\'s requests ' +
              '(node_route:* and node:petmesh_node_http_request_errors_per_requests:ratio_rate5m; alert PetmeshNodeHighErrorRatio above 5%).',
            unit: 'percentunit',
            queries: [
              q(
                `node_route:petmesh_node_http_request_errors:rate5m{${R}} / node_route:petmesh_node_http_requests:rate5m{${R}}`,
                '{{route}}',
              ),
              q(`node:petmesh_node_http_request_errors_per_requests:ratio_rate5m{${R}}`, 'all routes'),
            ],
            thresholds: thresholds('green', [0.05, 'red']),
            showThresholds: true,
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Latency',
            description:
              'Response time quantiles of the node over all routes, 5-minute window ' +
              '(node_quantile:petmesh_node_http_request_duration_seconds:histogram_quantile; alert PetmeshNodeHighLatency when p99 > 1s).',
            unit: 's',
            queries: quantiles('node_quantile:petmesh_node_http_request_duration_seconds:histogram_quantile', R, '', [
              '0.5',
              '0.9',
              '0.99',
            ]),
            thresholds: thresholds('green', [1, 'red']),
            showThresholds: true,
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'p99 latency by route',
            description: '99th percentile of the response time of each route over 5 minutes (from node_route_le:petmesh_node_http_request_duration_seconds_bucket:rate5m).',
            unit: 's',
            queries: [
              q(
                `histogram_quantile(0.99, sum by (route, le) (node_route_le:petmesh_node_http_request_duration_seconds_bucket:rate5m{${R}}))`,
                '{{route}}',
              ),
            ],
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Latency seen by the balancers',
            description:
              'Time from a balancer sending a request to this node to its response headers, over every balancer ' +
              '(node_quantile:petmesh_balancer_upstream_request_duration_seconds:histogram_quantile). Much above the ' +
              'node\'s own latency means time lost between the two (network, connection set-up, queueing).',
            unit: 's',
            queries: quantiles('node_quantile:petmesh_balancer_upstream_request_duration_seconds:histogram_quantile', R, '', [
              '0.5',
              '0.99',
            ]),
            w: 12,
            h: 8,
          }),
        ],
      },
      {
        title: 'Dependencies',
        panels: [
          timeseries({
            title: 'Dependency check latency',
            description: 'How long the last periodic check of PostgreSQL and Redis took (petmesh_node_dependency_latency_seconds).',
            unit: 's',
            queries: [q(`max by (dependency) (petmesh_node_dependency_latency_seconds{${N}})`, '{{dependency}}')],
            w: 8,
            h: 8,
          }),
          timeseries({
            title: 'Database pool',
            description:
              'PostgreSQL connections of the node\'s pool, idle and in use (petmesh_node_db_pool_connections), and the ' +
              'pool\'s size (petmesh_node_db_pool_max_connections). In use at the maximum means requests wait for a connection.',
            unit: 'none',
            queries: [
              q(`sum by (state) (petmesh_node_db_pool_connections{${N}})`, '{{state}}'),
              q(`max(petmesh_node_db_pool_max_connections{${N}})`, 'max'),
            ],
            w: 8,
            h: 8,
          }),
          timeseries({
            title: 'Requests in flight',
            description: 'HTTP requests the node is handling (petmesh_node_http_requests_in_flight).',
            unit: 'none',
            queries: [q(`sum(petmesh_node_http_requests_in_flight{${N}})`, 'in flight')],
            w: 8,
            h: 8,
          }),
          timeseries({
            title: 'Cache',
            description: 'Cache lookups per second by cache and result: hit, miss, error (Redis unreachable; petmesh_node_cache_requests_total).',
            unit: 'reqps',
            queries: [
              q(`sum by (cache, result) (rate(petmesh_node_cache_requests_total{${N}}[$__rate_interval]))`, '{{cache}} {{result}}'),
            ],
            w: 8,
            h: 8,
          }),
          timeseries({
            title: 'Events published',
            description: 'Cluster events the node appended to Redis per second, by result (petmesh_node_events_published_total). A failed domain event stays in the outbox and is retried; a failed room or custom event is reported to its sender.',
            unit: 'cps',
            queries: [
              q(`sum by (result) (rate(petmesh_node_events_published_total{${N}}[$__rate_interval]))`, '{{result}}'),
            ],
            w: 8,
            h: 8,
          }),
          timeseries({
            title: 'Redis degradation',
            description:
              'What the node skips while Redis is unreachable: token revocation checks (petmesh_node_revocation_checks_skipped_total), ' +
              'login lock-out checks (petmesh_node_login_checks_skipped_total) ' +
              'and registry heartbeats (petmesh_node_registry_heartbeat_failures_total), per second.',
            unit: 'cps',
            queries: [
              q(`sum(rate(petmesh_node_revocation_checks_skipped_total{${N}}[$__rate_interval]))`, 'revocation checks skipped'),
              q(`sum(rate(petmesh_node_login_checks_skipped_total{${N}}[$__rate_interval]))`, 'login checks skipped'),
              q(`sum(rate(petmesh_node_registry_heartbeat_failures_total{${N}}[$__rate_interval]))`, 'heartbeat failures'),
            ],
            w: 8,
            h: 8,
          }),
        ],
      },
      {
        title: 'Abuse resistance',
        panels: [
          timeseries({
            title: 'Login attempts by result',
            description:
              'Password logins per second by result (petmesh_node_login_attempts_total): success; failure (wrong password or ' +
              'unknown name); locked_out (a failure that locked its login name); name_locked and address_blocked (refused with ' +
              '429 before the password was looked at). Many name_locked or address_blocked: someone is guessing passwords.',
            unit: 'cps',
            queries: [q(`sum by (result) (rate(petmesh_node_login_attempts_total{${N}}[$__rate_interval]))`, '{{result}}')],
            w: 8,
            h: 8,
          }),
          timeseries({
            title: 'Rate limits',
            description:
              'Requests per second checked against the cluster-wide rate limits, by budget class and result ' +
              '(petmesh_node_rate_limit_requests_total; limited = answered 429), and checks this node made alone because ' +
              'Redis was unreachable (petmesh_node_rate_limit_fallbacks_total: limit / nodes per node).',
            unit: 'reqps',
            queries: [
              q(`sum by (class, result) (rate(petmesh_node_rate_limit_requests_total{${N}}[$__rate_interval]))`, '{{class}} {{result}}'),
              q(`sum(rate(petmesh_node_rate_limit_fallbacks_total{${N}}[$__rate_interval]))`, 'checked without Redis'),
            ],
            w: 8,
            h: 8,
          }),
          timeseries({
            title: 'Nodes in the registry',
            description:
              'Nodes with a live registry entry as this node counts them every 5 s (petmesh_node_registry_nodes): what its ' +
              'rate limits divide by while Redis is unreachable.',
            unit: 'none',
            queries: [q(`max(petmesh_node_registry_nodes{${N}})`, 'nodes')],
            w: 8,
            h: 8,
          }),
        ],
      },
      {
        title: 'WebSocket',
        panels: [
          timeseries({
            title: 'Connections opened and closed',
            description:
              'WebSocket connections opened, and closed by reason, per second (petmesh_node_ws_connections_opened_total, ' +
              'petmesh_node_ws_connections_closed_total); handshakes beyond realtime.handshakes_per_second that waited for ' +
              'their turn or were refused with 503 (petmesh_node_ws_handshakes_paced_total): a reconnect storm being paced.',
            unit: 'cps',
            queries: [
              q(`sum(rate(petmesh_node_ws_connections_opened_total{${N}}[$__rate_interval]))`, 'opened'),
              q(`sum by (reason) (rate(petmesh_node_ws_connections_closed_total{${N}}[$__rate_interval]))`, 'closed: {{reason}}'),
              q(`sum by (outcome) (rate(petmesh_node_ws_handshakes_paced_total{${N}}[$__rate_interval]))`, 'handshakes paced: {{outcome}}'),
            ],
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Messages',
            description: 'WebSocket messages received and sent per second, by type (petmesh_node_ws_messages_in_total, petmesh_node_ws_messages_out_total).',
            unit: 'cps',
            queries: [
              q(`sum by (type) (rate(petmesh_node_ws_messages_in_total{${N}}[$__rate_interval]))`, 'in: {{type}}'),
              q(`sum by (type) (rate(petmesh_node_ws_messages_out_total{${N}}[$__rate_interval]))`, 'out: {{type}}'),
            ],
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Broadcast latency',
            description: 'Time from the publication of an event to its fan-out on this node, 5-minute window (node_quantile:petmesh_node_ws_broadcast_latency_seconds:histogram_quantile).',
            unit: 's',
            queries: quantiles('node_quantile:petmesh_node_ws_broadcast_latency_seconds:histogram_quantile', R, '', ['0.5', '0.99']),
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Recoveries, gap fills and slow consumers',
            description:
              'Per second: resumptions of reconnecting clients, recovered or lost (petmesh_node_ws_recoveries_total); missed ' +
              'events read back from a topic\'s history (petmesh_node_ws_gap_fills_total); clients disconnected because they ' +
              'could not keep up (petmesh_node_ws_slow_consumer_disconnects_total; alert PetmeshWebSocketSlowConsumerSpike).',
            unit: 'cps',
            queries: [
              q(`sum by (result) (rate(petmesh_node_ws_recoveries_total{${N}}[$__rate_interval]))`, 'recoveries: {{result}}'),
              q(`sum(rate(petmesh_node_ws_gap_fills_total{${N}}[$__rate_interval]))`, 'gap fills'),
              q(`sum(rate(petmesh_node_ws_slow_consumer_disconnects_total{${N}}[$__rate_interval]))`, 'slow-consumer disconnects'),
            ],
            w: 12,
            h: 8,
          }),
        ],
      },
    ],
  });
}
