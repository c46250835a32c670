/** Expressions and panels more than one dashboard shows. */
import { BALANCER, q, stateTimeline, timeseries, valueMap, type Placeable, type Query } from '../lib.js';

const QUANTILE_NAMES = { '0.5': 'p50', '0.9': 'p90', '0.99': 'p99' } as const;

/** One query per quantile of a recording rule with a `quantile` label. */
export function quantiles(
  rule: string,
  selector: string,
  legendPrefix: string,
  which: Array<keyof typeof QUANTILE_NAMES>,
): Query[] {
  return which.map((quantile) => {
    const matchers = selector ? `${selector}, quantile="${quantile}"` : `quantile="${quantile}"`;
    return q(`${rule}{${matchers}}`, `${legendPrefix}${QUANTILE_NAMES[quantile]}`);
  });
}

/** 0 ready, 1 unhealthy, 2 draining, 3 draining and unhealthy; per node, over every balancer. */
export const nodeStateExpr =
  `max by (node) (petmesh_balancer_node_draining{${BALANCER}}) * 2 + (1 - min by (node) (petmesh_balancer_node_healthy{${BALANCER}}))`;

export function nodeStatePanel(w: number, h: number): Placeable {
  return stateTimeline({
    title: 'Node state (balancers)',
    description:
      'Each node as the balancers see it: ready, unhealthy (failed health probes or refused connections; ' +
      'petmesh_balancer_node_healthy) or draining (petmesh_balancer_node_draining). A node is shown unhealthy ' +
      'when any balancer finds it so. Nodes that left the registry disappear.',
    unit: 'none',
    queries: [q(nodeStateExpr, '{{node}}')],
    mappings: [
      valueMap([
        [0, 'ready', 'green'],
        [1, 'unhealthy', 'red'],
        [2, 'draining', 'blue'],
        [3, 'draining', 'blue'],
      ]),
    ],
    w,
    h,
  });
}

/** 0 closed, 1 half-open, 2 or 3 open; per node, the worst over every balancer. */
export const breakerStateExpr =
  `max by (node) (petmesh_balancer_node_breaker_state{${BALANCER}, state="half_open"})` +
  ` + 2 * max by (node) (petmesh_balancer_node_breaker_state{${BALANCER}, state="open"})`;

export function breakerPanel(w: number, h: number): Placeable {
  return stateTimeline({
    title: 'Circuit breakers',
    description:
      'The circuit breaker of each node in the balancers (petmesh_balancer_node_breaker_state): closed, ' +
      'half-open (one trial request allowed) or open (no traffic). Consecutive failed attempts open it; ' +
      'alert PetmeshBreakerOpen fires when it stays open or half-open for 5 minutes.',
    unit: 'none',
    queries: [q(breakerStateExpr, '{{node}}')],
    mappings: [
      valueMap([
        [0, 'closed', 'green'],
        [1, 'half-open', 'orange'],
        [2, 'open', 'red'],
        [3, 'open', 'red'],
      ]),
    ],
    w,
    h,
  });
}

export function retriesPanel(w: number, h: number): Placeable {
  return timeseries({
    title: 'Retries',
    description:
      'Idempotent requests the balancers sent again to another node (petmesh_balancer_retries_total), and ' +
      'retries they refused because the retry budget was spent (petmesh_balancer_retries_budget_exhausted_total; ' +
      'alert PetmeshRetryBudgetExhausted).',
    unit: 'reqps',
    queries: [
      q(`sum(rate(petmesh_balancer_retries_total{${BALANCER}}[$__rate_interval]))`, 'retried'),
      q(
        `sum(rate(petmesh_balancer_retries_budget_exhausted_total{${BALANCER}}[$__rate_interval]))`,
        'refused: budget exhausted',
      ),
    ],
    w,
    h,
  });
}

export function proxyErrorsPanel(w: number, h: number): Placeable {
  return timeseries({
    title: 'Errors the balancer answered itself',
    description:
      'Responses the balancers generated instead of a node, by kind (petmesh_balancer_proxy_errors_total): ' +
      'no_healthy_node and connect_* are 503, response_timed_out 504, upstream_failed 502, body_too_large 413, ' +
      'too_many_websockets 429, too_many_handshakes 503; client connections closed at accept because ' +
      'limits.max_connections was reached; and WebSocket handshakes that waited for their turn ' +
      '(petmesh_balancer_ws_handshakes_paced_total, limits.ws_handshakes_per_second): a reconnect storm being paced.',
    unit: 'reqps',
    stack: true,
    queries: [
      q(`sum by (kind) (rate(petmesh_balancer_proxy_errors_total{${BALANCER}}[$__rate_interval]))`, '{{kind}}'),
      q(
        `sum(rate(petmesh_balancer_client_connections_refused_total{${BALANCER}}[$__rate_interval]))`,
        'connection refused at accept',
      ),
      q(`sum(rate(petmesh_balancer_ws_handshakes_paced_total{${BALANCER}}[$__rate_interval]))`, 'handshakes paced (waited)'),
    ],
    w,
    h,
  });
}
