/** Every dashboard, by the name of its file under dashboards/. */
import type { DashboardJson } from '../schema.js';
import { balancer } from './balancer.js';
import { jobs } from './jobs.js';
import { node } from './node.js';
import { overview } from './overview.js';

export const dashboards: Record<string, () => DashboardJson> = {
  'petmesh-overview.json': overview,
  'petmesh-node.json': node,
  'petmesh-balancer.json': balancer,
  'petmesh-jobs.json': jobs,
};
