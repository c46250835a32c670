import { BALANCER, dashboard, q, stat, thresholds, timeseries, valueMap } from '../lib.js';
import type { DashboardJson } from '../schema.js';
import { breakerPanel, nodeStatePanel, proxyErrorsPanel, quantiles, retriesPanel } from './common.js';

const B = BALANCER;

export function balancer(): DashboardJson {
  return dashboard({
    uid: 'petmesh-balancer',
    title: 'petmesh / Balancer',
    description: 'The load balancers: discovery, client connections, traffic and latency per node, health, breakers and retries.',
    variables: [],
    rows: [
      {
        title: 'Balancers',
        panels: [
          stat({
            title: 'Version',
            description: 'The version each balancer runs (petmesh_balancer_info{version}).',
            unit: 'none',
            queries: [q(`max by (instance, version) (petmesh_balancer_info{${B}})`, '{{instance}}: {{version}}')],
            showName: true,
            w: 4,
            h: 4,
          }),
          stat({
            title: 'Discovery',
            description:
              'Whether every balancer read the node registry in Redis at its last attempt (petmesh_balancer_discovery_up; ' +
              'alert PetmeshBalancerDiscoveryFailing). While failing, a balancer keeps the node set it last knew.',
            unit: 'none',
            queries: [q(`min(petmesh_balancer_discovery_up{${B}})`, 'discovery')],
            mappings: [valueMap([[0, 'failing', 'red'], [1, 'up', 'green']])],
            background: true,
            w: 4,
            h: 4,
          }),
          stat({
            title: 'Panic mode',
            description: 'On while too few nodes are eligible and health is ignored (petmesh_balancer_panic_mode; alert PetmeshBalancerPanicMode).',
            unit: 'none',
            queries: [q(`max(petmesh_balancer_panic_mode{${B}})`, 'panic')],
            mappings: [valueMap([[0, 'off', 'green'], [1, 'PANIC', 'red']])],
            background: true,
            w: 4,
            h: 4,
          }),
          stat({
            title: 'Client connections',
            description: 'Client connections open on all balancers (petmesh_balancer_client_connections).',
            unit: 'none',
            queries: [q(`sum(petmesh_balancer_client_connections{${B}})`, 'connections')],
            sparkline: true,
            w: 4,
            h: 4,
          }),
          stat({
            title: 'Ready nodes',
            description: 'Nodes the balancer with the fewest can send requests to (petmesh_balancer_nodes{state="ready"}; alert PetmeshNoReadyNode at 0).',
            unit: 'none',
            queries: [q(`min(petmesh_balancer_nodes{${B}, state="ready"})`, 'ready')],
            thresholds: thresholds('red', [1, 'green']),
            background: true,
            w: 4,
            h: 4,
          }),
          stat({
            title: 'Retries refused',
            description: 'Retries refused per second because the retry budget was spent (petmesh_balancer_retries_budget_exhausted_total; alert PetmeshRetryBudgetExhausted).',
            unit: 'reqps',
            queries: [q(`sum(rate(petmesh_balancer_retries_budget_exhausted_total{${B}}[$__rate_interval]))`, 'refused')],
            thresholds: thresholds('green', [0.001, 'red']),
            sparkline: true,
            w: 4,
            h: 4,
          }),
          timeseries({
            title: 'Nodes by state',
            description: 'Nodes known to the balancers by state: ready, draining, unhealthy (petmesh_balancer_nodes; the highest over the balancers).',
            unit: 'none',
            queries: [q(`max by (state) (petmesh_balancer_nodes{${B}})`, '{{state}}')],
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Balancers registered',
            description:
              'Balancers each one counted in Redis at its last lease renewal (petmesh_balancer_balancers). They share the ' +
              'WebSocket limit per client address; while Redis is unreachable each admits ws_per_ip divided by this count.',
            unit: 'none',
            queries: [q(`max by (instance) (petmesh_balancer_balancers{${B}})`, '{{instance}}')],
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'WebSocket limit decided without Redis',
            description:
              'WebSocket handshakes per second a balancer judged alone, at its share of the limit, because Redis was ' +
              'unreachable (petmesh_balancer_websocket_limit_fallbacks_total). Normally 0.',
            unit: 'reqps',
            queries: [q(`sum by (instance) (rate(petmesh_balancer_websocket_limit_fallbacks_total{${B}}[$__rate_interval]))`, '{{instance}}')],
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Client connections per worker',
            description: 'Client connections each event loop of each balancer serves (petmesh_balancer_worker_connections); they should stay even.',
            unit: 'none',
            queries: [q(`sum by (instance, worker) (petmesh_balancer_worker_connections{${B}})`, '{{instance}} worker {{worker}}')],
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Cluster consoles open',
            description:
              'Browsers showing each balancer\'s cluster console (GET / on the admin port; petmesh_balancer_console_clients), ' +
              'and the snapshots per second taken for them (petmesh_balancer_console_snapshots_total): one a second while ' +
              'any console is open, none otherwise.',
            unit: 'none',
            queries: [
              q(`sum by (instance) (petmesh_balancer_console_clients{${B}})`, '{{instance}} consoles'),
              q(`sum by (instance) (rate(petmesh_balancer_console_snapshots_total{${B}}[$__rate_interval]))`, '{{instance}} snapshots/s'),
            ],
            w: 12,
            h: 8,
          }),
        ],
      },
      {
        title: 'Upstreams',
        panels: [
          timeseries({
            title: 'Requests per node',
            description: 'Attempts per second the balancers sent to each node, retries included (node:petmesh_balancer_upstream_requests:rate5m).',
            unit: 'reqps',
            queries: [q('node:petmesh_balancer_upstream_requests:rate5m', '{{node}}')],
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Failed attempts per node',
            description:
              'Share of the attempts at each node that failed: connect errors, timeouts, 502/503/504 ' +
              '(node:petmesh_balancer_upstream_errors_per_requests:ratio_rate5m).',
            unit: 'percentunit',
            queries: [q('node:petmesh_balancer_upstream_errors_per_requests:ratio_rate5m', '{{node}}')],
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Upstream latency per node',
            description:
              'Time from sending a request to a node to its response headers, 5-minute window ' +
              '(node_quantile:petmesh_balancer_upstream_request_duration_seconds:histogram_quantile).',
            unit: 's',
            queries: quantiles('node_quantile:petmesh_balancer_upstream_request_duration_seconds:histogram_quantile', '', '{{node}} ', [
              '0.5',
              '0.99',
            ]),
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Requests in flight per node',
            description: 'HTTP requests open at each node, over all balancers (petmesh_balancer_upstream_in_flight).',
            unit: 'none',
            queries: [q(`sum by (node) (petmesh_balancer_upstream_in_flight{${B}})`, '{{node}}')],
            stack: true,
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'WebSocket tunnels per node',
            description: 'WebSocket tunnels open to each node, over all balancers (petmesh_balancer_websocket_connections).',
            unit: 'none',
            queries: [q(`sum by (node) (petmesh_balancer_websocket_connections{${B}})`, '{{node}}')],
            stack: true,
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Picks by strategy',
            description: 'Nodes chosen first per second, by traffic (http, ws), strategy and node (petmesh_balancer_picks_total).',
            unit: 'cps',
            queries: [
              q(
                `sum by (traffic, strategy, node) (rate(petmesh_balancer_picks_total{${B}}[$__rate_interval]))`,
                '{{traffic}} {{strategy}}: {{node}}',
              ),
            ],
            w: 12,
            h: 8,
          }),
        ],
      },
      {
        title: 'Resilience',
        panels: [
          nodeStatePanel(12, 8),
          breakerPanel(12, 8),
          timeseries({
            title: 'Breaker transitions',
            description: 'Circuit breaker state changes by node and new state (petmesh_balancer_breaker_transitions_total).',
            unit: 'none',
            queries: [
              q(
                `sum by (node, state) (increase(petmesh_balancer_breaker_transitions_total{${B}}[$__rate_interval]))`,
                '{{node}} to {{state}}',
              ),
            ],
            bars: true,
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Health transitions',
            description: 'Health verdict changes by node and new verdict (petmesh_balancer_health_transitions_total).',
            unit: 'none',
            queries: [
              q(
                `sum by (node, healthy) (increase(petmesh_balancer_health_transitions_total{${B}}[$__rate_interval]))`,
                '{{node}} healthy={{healthy}}',
              ),
            ],
            bars: true,
            w: 12,
            h: 8,
          }),
          retriesPanel(12, 8),
          proxyErrorsPanel(12, 8),
          timeseries({
            title: 'Discovery failures',
            description: 'Failed reads of the node registry per balancer (petmesh_balancer_discovery_failures_total): Redis unreachable or bad entries.',
            unit: 'none',
            queries: [
              q(`sum by (instance) (increase(petmesh_balancer_discovery_failures_total{${B}}[$__rate_interval]))`, '{{instance}}'),
            ],
            bars: true,
            w: 24,
            h: 6,
          }),
        ],
      },
    ],
  });
}
