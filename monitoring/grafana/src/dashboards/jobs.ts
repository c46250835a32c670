import { NODE, dashboard, q, stat, thresholds, timeseries } from '../lib.js';
import type { DashboardJson } from '../schema.js';

const N = NODE;

export function jobs(): DashboardJson {
  return dashboard({
    uid: 'petmesh-jobs',
    title: 'petmesh / Jobs and payments',
    description:
      'The PostgreSQL job queue and the payment jobs: backlog, throughput, outcomes, time to outcome, attempts, dead letters and orders; ' +
      'and the event outbox, the other PostgreSQL-backed queue (domain events waiting for Redis). ' +
      'Queue and outbox gauges are cluster-wide and sampled by every node, so they are shown as max/min over the nodes, never summed.',
    variables: [],
    rows: [
      {
        title: 'Queue',
        panels: [
          stat({
            title: 'Queue depth',
            description: 'Jobs queued or running, cluster-wide (petmesh_node_job_queue_depth, highest sample over the nodes).',
            unit: 'none',
            queries: [q(`max(petmesh_node_job_queue_depth{${N}})`, 'jobs')],
            thresholds: thresholds('green', [1000, 'orange']),
            sparkline: true,
            w: 6,
            h: 4,
          }),
          stat({
            title: 'Oldest due job',
            description: 'How long the oldest due job has been waiting, 0 when none (petmesh_node_job_queue_oldest_age_seconds; alert PetmeshJobBacklog above 5 minutes).',
            unit: 's',
            queries: [q(`max(petmesh_node_job_queue_oldest_age_seconds{${N}})`, 'oldest')],
            thresholds: thresholds('green', [60, 'orange'], [300, 'red']),
            sparkline: true,
            w: 6,
            h: 4,
          }),
          stat({
            title: 'Dead letters kept',
            description: 'Jobs that ran out of attempts and are kept in the dead-letter table (petmesh_node_job_queue_dead_letters).',
            unit: 'none',
            queries: [q(`max(petmesh_node_job_queue_dead_letters{${N}})`, 'dead letters')],
            thresholds: thresholds('green', [1, 'orange']),
            w: 6,
            h: 4,
          }),
          stat({
            title: 'Orders approved',
            description:
              'Share of the orders settled recently that were approved rather than cancelled: a declined payment, a payment ' +
              'out of attempts, or the user (petmesh_node_orders_total{status=~"approved|cancelled"}).',
            unit: 'percentunit',
            decimals: 1,
            queries: [
              q(
                `sum(rate(petmesh_node_orders_total{${N}, status="approved"}[$__rate_interval]))` +
                  ` / sum(rate(petmesh_node_orders_total{${N}, status=~"approved|cancelled"}[$__rate_interval]))`,
                'approved',
              ),
            ],
            w: 6,
            h: 4,
          }),
          timeseries({
            title: 'Queue depth',
            description: 'Jobs queued or running, cluster-wide, highest and lowest sample over the nodes (petmesh_node_job_queue_depth).',
            unit: 'none',
            queries: [
              q(`max by (cluster) (petmesh_node_job_queue_depth{${N}})`, '{{cluster}} max'),
              q(`min by (cluster) (petmesh_node_job_queue_depth{${N}})`, '{{cluster}} min'),
            ],
            thresholds: thresholds('green', [1000, 'orange']),
            showThresholds: true,
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Oldest due job',
            description: 'How long the oldest due job has been waiting (petmesh_node_job_queue_oldest_age_seconds; alert PetmeshJobBacklog above 5 minutes).',
            unit: 's',
            queries: [q(`max by (cluster) (petmesh_node_job_queue_oldest_age_seconds{${N}})`, '{{cluster}}')],
            thresholds: thresholds('green', [300, 'red']),
            showThresholds: true,
            w: 12,
            h: 8,
          }),
        ],
      },
      {
        title: 'Processing',
        panels: [
          timeseries({
            title: 'Jobs finished by outcome',
            description: 'Jobs that reached their final outcome per second, by kind and outcome: done, or dead after its last attempt (petmesh_node_job_duration_seconds_count).',
            unit: 'cps',
            queries: [
              q(
                `sum by (kind, outcome) (rate(petmesh_node_job_duration_seconds_count{${N}}[$__rate_interval]))`,
                '{{kind}} {{outcome}}',
              ),
            ],
            stack: true,
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Time to outcome',
            description:
              'Time from enqueueing a job to its final outcome (waiting, every attempt and the backoffs between them), by kind, ' +
              '50th and 99th percentile (petmesh_node_job_duration_seconds).',
            unit: 's',
            queries: [
              q(
                `histogram_quantile(0.5, sum by (kind, le) (rate(petmesh_node_job_duration_seconds_bucket{${N}}[$__rate_interval])))`,
                '{{kind}} p50',
              ),
              q(
                `histogram_quantile(0.99, sum by (kind, le) (rate(petmesh_node_job_duration_seconds_bucket{${N}}[$__rate_interval])))`,
                '{{kind}} p99',
              ),
            ],
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Attempts per job',
            description: 'Attempts a finished job took, by kind: mean and 99th percentile (petmesh_node_job_attempts). Rising attempts mean failing payments being retried.',
            unit: 'none',
            queries: [
              q(
                `sum by (kind) (rate(petmesh_node_job_attempts_sum{${N}}[$__rate_interval])) / sum by (kind) (rate(petmesh_node_job_attempts_count{${N}}[$__rate_interval]))`,
                '{{kind}} mean',
              ),
              q(
                `histogram_quantile(0.99, sum by (kind, le) (rate(petmesh_node_job_attempts_bucket{${N}}[$__rate_interval])))`,
                '{{kind}} p99',
              ),
            ],
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Jobs finished per node',
            description: 'Jobs finished per second by each node (petmesh_node_job_duration_seconds_count): shows which nodes do the work.',
            unit: 'cps',
            queries: [q(`sum by (node) (rate(petmesh_node_job_duration_seconds_count{${N}}[$__rate_interval]))`, '{{node}}')],
            stack: true,
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Dead letters',
            description:
              'Jobs moved to the dead letters, by kind (petmesh_node_job_dead_letters_total; alert PetmeshJobDeadLetters), ' +
              'and dead-letter jobs kept in the table (petmesh_node_job_queue_dead_letters).',
            unit: 'none',
            queries: [
              q(`sum by (kind) (increase(petmesh_node_job_dead_letters_total{${N}}[$__rate_interval]))`, '{{kind}} new'),
              q(`max(petmesh_node_job_queue_dead_letters{${N}})`, 'kept in the table'),
            ],
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Orders by status',
            description: 'Orders per second by status change: placed, approved, cancelled, delivered (petmesh_node_orders_total).',
            unit: 'cps',
            queries: [q(`sum by (status) (rate(petmesh_node_orders_total{${N}}[$__rate_interval]))`, '{{status}}')],
            w: 12,
            h: 8,
          }),
        ],
      },
      {
        title: 'Event outbox',
        panels: [
          stat({
            title: 'Events waiting',
            description:
              'Domain events committed but not yet appended to Redis, cluster-wide (petmesh_node_outbox_pending_events, highest sample over the nodes). ' +
              'A handful normally; they pile up while Redis is unreachable and drain when it is back.',
            unit: 'none',
            queries: [q(`max(petmesh_node_outbox_pending_events{${N}})`, 'events')],
            thresholds: thresholds('green', [100, 'orange']),
            sparkline: true,
            w: 6,
            h: 4,
          }),
          stat({
            title: 'Oldest waiting event',
            description: 'How long the oldest undelivered domain event has waited, 0 when none (petmesh_node_outbox_oldest_pending_age_seconds; alert PetmeshOutboxBacklog above 1 minute).',
            unit: 's',
            queries: [q(`max(petmesh_node_outbox_oldest_pending_age_seconds{${N}})`, 'oldest')],
            thresholds: thresholds('green', [10, 'orange'], [60, 'red']),
            sparkline: true,
            w: 6,
            h: 4,
          }),
          timeseries({
            title: 'Topics relayed per node',
            description: 'Topics whose relay lease each node holds (petmesh_node_outbox_leases_held): each topic is relayed by exactly one node; it moves when its node dies or drains.',
            unit: 'none',
            queries: [q(`sum by (node) (petmesh_node_outbox_leases_held{${N}})`, '{{node}}')],
            stack: true,
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Events relayed and relay errors',
            description:
              'Domain events each node relayed from the outbox to Redis per second (petmesh_node_outbox_relayed_total), ' +
              'and failed relay passes, retried with backoff (petmesh_node_outbox_relay_errors_total).',
            unit: 'cps',
            queries: [
              q(`sum by (node) (rate(petmesh_node_outbox_relayed_total{${N}}[$__rate_interval]))`, '{{node}} relayed'),
              q(`sum by (node) (rate(petmesh_node_outbox_relay_errors_total{${N}}[$__rate_interval]))`, '{{node}} errors'),
            ],
            w: 12,
            h: 8,
          }),
          timeseries({
            title: 'Outbox backlog',
            description: 'Domain events waiting and the age of the oldest, cluster-wide (petmesh_node_outbox_pending_events, petmesh_node_outbox_oldest_pending_age_seconds).',
            unit: 'none',
            queries: [
              q(`max by (cluster) (petmesh_node_outbox_pending_events{${N}})`, '{{cluster}} events'),
              q(`max by (cluster) (petmesh_node_outbox_oldest_pending_age_seconds{${N}})`, '{{cluster}} oldest (s)'),
            ],
            w: 12,
            h: 8,
          }),
        ],
      },
    ],
  });
}
