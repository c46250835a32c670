import { BALANCER, NODE, dashboard, q, stat, thresholds, timeseries, valueMap } from '../lib.js';
import type { DashboardJson } from '../schema.js';
import { breakerPanel, nodeStatePanel, proxyErrorsPanel, quantiles, retriesPanel } from './common.js';

export function overview(): DashboardJson {
  return dashboard({
    uid: 'petmesh-overview',
    title: 'petmesh / Cluster overview',
    description: 'The whole cluster at a glance: nodes, traffic, errors, latency, WebSockets and the balancers.',
    variables: [],
    rows: [
      {
        title: 'Cluster',
        panels: [
          stat({
            title: 'Ready nodes',
            description:
              'Nodes a balancer can send requests to: registered, not draining and healthy ' +
              '(petmesh_balancer_nodes{state="ready"}; the lowest over the balancers). 0 means every request ' +
              'gets 503 (alert PetmeshNoReadyNode).',
            unit: 'none',
            queries: [q(`min(petmesh_balancer_nodes{${BALANCER}, state="ready"})`, 'ready')],
            thresholds: thresholds('red', [1, 'green']),
            background: true,
            w: 3,
            h: 4,
          }),
          stat({
            title: 'Draining nodes',
            description: 'Nodes shutting down: they finish their work but get no new requests (petmesh_balancer_nodes{state="draining"}).',
            unit: 'none',
            queries: [q(`max(petmesh_balancer_nodes{${BALANCER}, state="draining"})`, 'draining')],
            thresholds: thresholds('green', [1, 'blue']),
            w: 3,
            h: 4,
          }),
          stat({
            title: 'Unhealthy nodes',
            description:
              'Registered, not draining, but failing health probes (petmesh_balancer_nodes{state="unhealthy"}; ' +
              'the highest over the balancers). See the node state timeline below.',
            unit: 'none',
            queries: [q(`max(petmesh_balancer_nodes{${BALANCER}, state="unhealthy"})`, 'unhealthy')],
            thresholds: thresholds('green', [1, 'red']),
            w: 3,
            h: 4,
          }),
          stat({
            title: 'Panic mode',
            description:
              'On when fewer than panic_threshold of the non-draining nodes are eligible: the balancer then ignores ' +
              'health and breakers and sends traffic to all of them (petmesh_balancer_panic_mode; alert PetmeshBalancerPanicMode).',
            unit: 'none',
            queries: [q(`max(petmesh_balancer_panic_mode{${BALANCER}})`, 'panic')],
            mappings: [valueMap([[0, 'off', 'green'], [1, 'PANIC', 'red']])],
            background: true,
            w: 3,
            h: 4,
          }),
          stat({
            title: 'Requests',
            description: 'Requests per second served by all nodes (recording rule cluster:petmesh_node_http_requests:rate5m).',
            unit: 'reqps',
            queries: [q('sum(cluster:petmesh_node_http_requests:rate5m)', 'requests')],
            sparkline: true,
            w: 3,
            h: 4,
          }),
          stat({
            title: '5xx ratio',
            description:
              'Share of the requests answered 5xx by the nodes over 5 minutes (recording rules cluster:*:rate5m; ' +
              'alert PetmeshClusterHighErrorRatio above 5%).',
            unit: 'percentunit',
            decimals: 2,
            queries: [
              q(
                'sum(cluster:petmesh_node_http_request_errors:rate5m) / sum(cluster:petmesh_node_http_requests:rate5m)',
                '5xx',
              ),
            ],
            thresholds: thresholds('green', [0.01, 'orange'], [0.05, 'red']),
            sparkline: true,
            w: 3,
            h: 4,
          }),
          stat({
            title: 'p99 latency',
            description:
              '99th percentile of the response time over all nodes and routes, 5-minute window ' +
              '(cluster_quantile:petmesh_node_http_request_duration_seconds:histogram_quantile).',
            unit: 's',
            queries: [
              q('max(cluster_quantile:petmesh_node_http_request_duration_seconds:histogram_quantile{quantile="0.99"})', 'p99'),
            ],
            thresholds: thresholds('green', [0.5, 'orange'], [1, 'red']),
            sparkline: true,
            w: 3,
            h: 4,
          }),
          stat({
            title: 'WebSocket connections',
            description: 'Open WebSocket connections on all nodes (petmesh_node_websocket_connections).',
            unit: 'none',
            queries: [q(`sum(petmesh_node_websocket_connections{${NODE}})`, 'connections')],
            sparkline: true,
            w: 3,
            h: 4,
          }),
          nodeStatePanel(24, 6),
        ],
      },
      {
        title: 'HTTP',
        panels: [
          timeseries({
            title: 'Requests per node',
            description: 'Requests per second each node served (node:petmesh_node_http_requests:rate5m). An even spread is expected with round-robin.',
            unit: 'reqps',
            queries: [q('node:petmesh_node_http_requests:rate5m', '{{node}}')],
            w: 12,
            h: 8,
          }),
          timeseries({
            title: '5xx ratio per node',
            description:
              'Share of each node\'s requests answered 5xx over 5 minutes ' +
              '(node:petmesh_node_http_request_errors_per_requests:ratio_rate5m; alert PetmeshNodeHighErrorRatio above 5%).',
            unit: 'percentunit',
            queries: [q('node:petmesh_node_http_request_errors_per_requests:ratio_rate5m', '{{node}}')],
            thresholds: thresholds('green', [0.05, 'red']),
            showThresholds: true,
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'p99 latency per node',
            description:
              '99th percentile of each node\'s response time over 5 minutes ' +
              '(node_quantile:petmesh_node_http_request_duration_seconds:histogram_quantile; alert PetmeshNodeHighLatency above 1s).',
            unit: 's',
            queries: [
              q('node_quantile:petmesh_node_http_request_duration_seconds:histogram_quantile{quantile="0.99"}', '{{node}}'),
            ],
            thresholds: thresholds('green', [1, 'red']),
            showThresholds: true,
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Latency (cluster)',
            description: 'Response time quantiles over all nodes and routes, 5-minute window (cluster_quantile:petmesh_node_http_request_duration_seconds:histogram_quantile).',
            unit: 's',
            queries: quantiles(
              'cluster_quantile:petmesh_node_http_request_duration_seconds:histogram_quantile',
              '',
              '{{cluster}} ',
              ['0.5', '0.9', '0.99'],
            ),
            w: 12,
            h: 8,
          }),
        ],
      },
      {
        title: 'Real-time',
        panels: [
          timeseries({
            title: 'WebSocket connections per node',
            description: 'Open WebSocket connections on each node (petmesh_node_websocket_connections), stacked.',
            unit: 'none',
            queries: [q(`sum by (node) (petmesh_node_websocket_connections{${NODE}})`, '{{node}}')],
            stack: true,
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Broadcast latency p99',
            description:
              'Time from the publication of an event to its fan-out on each node, 99th percentile over 5 minutes ' +
              '(node_quantile / cluster_quantile:petmesh_node_ws_broadcast_latency_seconds:histogram_quantile).',
            unit: 's',
            queries: [
              q('node_quantile:petmesh_node_ws_broadcast_latency_seconds:histogram_quantile{quantile="0.99"}', '{{node}}'),
              q('cluster_quantile:petmesh_node_ws_broadcast_latency_seconds:histogram_quantile{quantile="0.99"}', 'cluster {{cluster}}'),
            ],
            w: 12,
            h: 8,
          }),
        ],
      },
      {
        title: 'Balancer',
        panels: [
          breakerPanel(12, 8),
          retriesPanel(12, 8),
          timeseries({
            title: 'Failed attempts per node',
            description:
              'Share of the attempts the balancers sent to each node that failed: connect errors, timeouts, 502/503/504 ' +
              '(node:petmesh_balancer_upstream_errors_per_requests:ratio_rate5m).',
            unit: 'percentunit',
            queries: [q('node:petmesh_balancer_upstream_errors_per_requests:ratio_rate5m', '{{node}}')],
            w: 12,
            h: 8,
          }),
          proxyErrorsPanel(12, 8),
        ],
      },
    ],
  });
}
