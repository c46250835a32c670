/**
 * Small builders for the petmesh dashboards: every panel reads from `$datasource`, has a
 * description and a unit, and is placed by `layout` (left to right, 24 columns, rows in order).
 */
import type {
  DashboardJson,
  DashboardLinkJson,
  PanelJson,
  PrometheusQueryJson,
  RowPanelJson,
  StateTimelinePanel,
  StatPanel,
  ThresholdsJson,
  TimeSeriesPanel,
  ValueMappingJson,
  VariableJson,
} from './schema.js';
import type { Json } from './schema.js';

export const DATASOURCE = { type: 'prometheus', uid: '${datasource}' } as const;

/** Selectors of the two scrape jobs. */
export const NODE = 'job="petmesh-node"';
export const BALANCER = 'job="petmesh-balancer"';

/** A query: expression and legend. */
export interface Query {
  expr: string;
  legend: string;
}

export const q = (expr: string, legend: string): Query => ({ expr, legend });

function targets(queries: Query[]): PrometheusQueryJson[] {
  return queries.map((query, i) => ({
    datasource: DATASOURCE,
    editorMode: 'code',
    expr: query.expr,
    legendFormat: query.legend,
    range: true,
    refId: String.fromCharCode(65 + i),
  }));
}

/** Thresholds: a base color, then [value, color] steps. */
export function thresholds(base: string, ...steps: Array<[number, string]>): ThresholdsJson {
  return {
    mode: 'absolute',
    steps: [{ color: base, value: null }, ...steps.map(([value, color]) => ({ color, value }))],
  };
}

/** Maps exact values to texts and colors. */
export function valueMap(entries: Array<[number, string, string]>): ValueMappingJson {
  const options: Record<string, { color: string; index: number; text: string }> = {};
  entries.forEach(([value, text, color], index) => {
    options[String(value)] = { color, index, text };
  });
  return { options, type: 'value' };
}

interface PanelSpec {
  title: string;
  description: string;
  unit: string;
  queries: Query[];
  /** Width in grid columns (of 24) and height in grid rows. */
  w: number;
  h: number;
  min?: number;
  max?: number;
  decimals?: number;
  thresholds?: ThresholdsJson;
  mappings?: ValueMappingJson[];
}

/** A panel waiting for its id and position. */
export interface Placeable {
  w: number;
  h: number;
  place(id: number, x: number, y: number): PanelJson;
}

function fieldDefaults(spec: PanelSpec) {
  return {
    unit: spec.unit,
    ...(spec.min === undefined ? {} : { min: spec.min }),
    ...(spec.max === undefined ? {} : { max: spec.max }),
    ...(spec.decimals === undefined ? {} : { decimals: spec.decimals }),
    mappings: spec.mappings ?? [],
    thresholds: spec.thresholds ?? thresholds('green'),
  };
}

export interface TimeSeriesSpec extends PanelSpec {
  stack?: boolean;
  bars?: boolean;
  /** Draw the thresholds as dashed lines. */
  showThresholds?: boolean;
  legendCalcs?: string[];
}

export function timeseries(spec: TimeSeriesSpec): Placeable {
  return {
    w: spec.w,
    h: spec.h,
    place(id, x, y): Json<TimeSeriesPanel> {
      return {
        datasource: DATASOURCE,
        description: spec.description,
        fieldConfig: {
          defaults: {
            ...fieldDefaults(spec),
            color: { mode: 'palette-classic' },
            custom: {
              axisSoftMin: 0,
              drawStyle: spec.bars ? 'bars' : 'line',
              fillOpacity: spec.stack || spec.bars ? 60 : 10,
              lineWidth: 1,
              showPoints: 'never',
              spanNulls: false,
              stacking: { group: 'A', mode: spec.stack ? 'normal' : 'none' },
              thresholdsStyle: { mode: spec.showThresholds ? 'dashed' : 'off' },
            },
          },
          overrides: [],
        },
        gridPos: { h: spec.h, w: spec.w, x, y },
        id,
        options: {
          legend: {
            calcs: spec.legendCalcs ?? [],
            displayMode: spec.legendCalcs ? 'table' : 'list',
            placement: 'bottom',
            showLegend: true,
          },
          tooltip: { mode: 'multi', sort: 'desc' },
        },
        targets: targets(spec.queries),
        title: spec.title,
        type: 'timeseries',
      };
    },
  };
}

export interface StatSpec extends PanelSpec {
  /** Color the background rather than the value. */
  background?: boolean;
  /** Show the series name instead of the value (e.g. a version label). */
  showName?: boolean;
  sparkline?: boolean;
}

export function stat(spec: StatSpec): Placeable {
  return {
    w: spec.w,
    h: spec.h,
    place(id, x, y): Json<StatPanel> {
      return {
        datasource: DATASOURCE,
        description: spec.description,
        fieldConfig: {
          defaults: { ...fieldDefaults(spec), color: { mode: 'thresholds' } },
          overrides: [],
        },
        gridPos: { h: spec.h, w: spec.w, x, y },
        id,
        options: {
          colorMode: spec.background ? 'background' : 'value',
          graphMode: spec.sparkline ? 'area' : 'none',
          justifyMode: 'auto',
          orientation: 'auto',
          percentChangeColorMode: 'standard',
          reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false },
          showPercentChange: false,
          textMode: spec.showName ? 'name' : 'auto',
          wideLayout: true,
        },
        targets: targets(spec.queries),
        title: spec.title,
        type: 'stat',
      };
    },
  };
}

export function stateTimeline(spec: PanelSpec): Placeable {
  return {
    w: spec.w,
    h: spec.h,
    place(id, x, y): Json<StateTimelinePanel> {
      return {
        datasource: DATASOURCE,
        description: spec.description,
        fieldConfig: {
          defaults: {
            ...fieldDefaults(spec),
            color: { mode: 'thresholds' },
            custom: { fillOpacity: 80, lineWidth: 0 },
          },
          overrides: [],
        },
        gridPos: { h: spec.h, w: spec.w, x, y },
        id,
        options: {
          alignValue: 'left',
          legend: { calcs: [], displayMode: 'list', placement: 'bottom', showLegend: true },
          mergeValues: true,
          rowHeight: 0.9,
          showValue: 'never',
          tooltip: { mode: 'single', sort: 'none' },
        },
        targets: targets(spec.queries),
        title: spec.title,
        type: 'state-timeline',
      };
    },
  };
}

/** A titled row of panels. */
export interface Row {
  title: string;
  panels: Placeable[];
}

/** Places rows and their panels on the 24-column grid and numbers them from 1. */
export function layout(rows: Row[]): Array<PanelJson | RowPanelJson> {
  const out: Array<PanelJson | RowPanelJson> = [];
  let id = 1;
  let y = 0;
  for (const row of rows) {
    out.push({ collapsed: false, gridPos: { h: 1, w: 24, x: 0, y }, id: id++, panels: [], title: row.title, type: 'row' });
    y += 1;
    let x = 0;
    let lineHeight = 0;
    for (const panel of row.panels) {
      if (panel.w > 24) throw new Error(`${row.title}: a panel wider than 24 columns`);
      if (x + panel.w > 24) {
        y += lineHeight;
        x = 0;
        lineHeight = 0;
      }
      out.push(panel.place(id++, x, y));
      x += panel.w;
      lineHeight = Math.max(lineHeight, panel.h);
    }
    y += lineHeight;
  }
  return out;
}

export const datasourceVariable: VariableJson = {
  hide: 0,
  includeAll: false,
  label: 'Data source',
  multi: false,
  name: 'datasource',
  options: [],
  query: 'prometheus',
  refresh: 1,
  regex: '',
  skipUrlSync: false,
  type: 'datasource',
};

/** A single-value variable filled from a Prometheus `label_values(...)` query. */
export function queryVariable(name: string, label: string, query: string): VariableJson {
  return {
    datasource: DATASOURCE,
    hide: 0,
    includeAll: false,
    label,
    multi: false,
    name,
    options: [],
    query,
    refresh: 2,
    regex: '',
    skipUrlSync: false,
    sort: 1,
    type: 'query',
  };
}

/** Links every petmesh dashboard to the others (by tag), keeping time range and variables. */
const links: DashboardLinkJson[] = [
  {
    asDropdown: true,
    icon: 'external link',
    includeVars: false,
    keepTime: true,
    tags: ['petmesh'],
    targetBlank: false,
    title: 'petmesh',
    tooltip: '',
    type: 'dashboards',
    url: '',
  },
];

export interface DashboardSpec {
  uid: string;
  title: string;
  description: string;
  variables: VariableJson[];
  rows: Row[];
}

/** A whole dashboard with petmesh's common settings. */
export function dashboard(spec: DashboardSpec): DashboardJson {
  return {
    annotations: { list: [] },
    description: spec.description,
    editable: true,
    graphTooltip: 1,
    id: null,
    links,
    panels: layout(spec.rows),
    refresh: '30s',
    schemaVersion: 39,
    tags: ['petmesh'],
    templating: { list: [datasourceVariable, ...spec.variables] },
    time: { from: 'now-1h', to: 'now' },
    timepicker: {},
    timezone: 'browser',
    title: spec.title,
    uid: spec.uid,
    version: 1,
  };
}
