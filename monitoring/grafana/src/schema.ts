/**
 * The dashboard model the generator writes and the JSON check reads, derived from the types of
 * `@grafana/schema` (the classic dashboard model, schemaVersion 3x/4x) and narrowed to what
 * petmesh uses: Prometheus queries through the `$datasource` variable, and three panel types
 * whose `options` and `fieldConfig.defaults.custom` are checked against their panel schemas.
 *
 * `Json<T>` turns every string enum of the schema into the union of its values, which is what
 * the JSON holds: `"displayMode": "list"` type-checks, `"displayMode": "lst"` does not.
 */
import type * as schema from '@grafana/schema';
import type * as stat from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type * as stateTimeline from '@grafana/schema/dist/esm/raw/composable/statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen';
import type * as timeSeries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';

/** T as it appears in JSON: string enums become their string values. */
export type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<Json<U>>
      : T extends object
        ? { [K in keyof T]: Json<T[K]> }
        : T;

/**
 * T's own properties as an object type rather than an interface, so that it is assignable to the
 * schema's `Record<string, unknown>` (interfaces have no implicit index signature).
 */
type Props<T> = { [K in keyof T]: T[K] };

/** Every panel and query reads from the dashboard's `datasource` variable. */
export interface DatasourceRef extends schema.DataSourceRef {
  type: 'prometheus';
  uid: '${datasource}';
}

/** A Prometheus query (the fields of the Prometheus data source's query model that we use). */
export interface PrometheusQuery extends schema.DataQuery {
  datasource: DatasourceRef;
  expr: string;
  legendFormat?: string;
  range?: boolean;
  instant?: boolean;
  format?: 'time_series' | 'table' | 'heatmap';
  interval?: string;
  editorMode?: 'code' | 'builder';
}

/** Field config whose `custom` part is the panel plugin's own field config. */
export type FieldConfigSource<TCustom> = Omit<schema.FieldConfigSource, 'defaults'> & {
  defaults: Omit<schema.FieldConfig, 'custom'> & { custom?: TCustom };
};

interface PanelOf<TType extends string, TOptions, TCustom>
  extends Omit<
    schema.Panel,
    'type' | 'id' | 'title' | 'description' | 'gridPos' | 'datasource' | 'targets' | 'options' | 'fieldConfig'
  > {
  type: TType;
  id: number;
  title: string;
  description: string;
  gridPos: schema.GridPos;
  datasource: DatasourceRef;
  targets: Array<Props<PrometheusQuery>>;
  options: Props<TOptions>;
  fieldConfig: FieldConfigSource<Props<TCustom>>;
}

export type TimeSeriesPanel = PanelOf<'timeseries', timeSeries.Options, timeSeries.FieldConfig>;
/** The stat panel has no custom field config. */
export type StatPanel = PanelOf<'stat', stat.Options, Record<string, never>>;
export type StateTimelinePanel = PanelOf<'state-timeline', stateTimeline.Options, stateTimeline.FieldConfig>;
export type Panel = TimeSeriesPanel | StatPanel | StateTimelinePanel;

export interface RowPanel extends Omit<schema.RowPanel, 'panels' | 'title' | 'gridPos' | 'datasource'> {
  title: string;
  gridPos: schema.GridPos;
  panels: Panel[];
}

export interface DatasourceVariable extends Omit<schema.VariableModel, 'type' | 'query' | 'datasource'> {
  type: 'datasource';
  query: 'prometheus';
}

export interface QueryVariable extends Omit<schema.VariableModel, 'type' | 'query' | 'datasource'> {
  type: 'query';
  datasource: DatasourceRef;
  query: string;
}

export type Variable = DatasourceVariable | QueryVariable;

export interface Dashboard
  extends Omit<schema.Dashboard, 'uid' | 'title' | 'description' | 'tags' | 'panels' | 'templating'> {
  uid: string;
  title: string;
  description: string;
  tags: string[];
  panels: Array<Panel | RowPanel>;
  templating: { list: Variable[] };
}

/** What a file under dashboards/ must type-check as. */
export type DashboardJson = Json<Dashboard>;
export type PanelJson = Json<Panel>;
export type RowPanelJson = Json<RowPanel>;
export type VariableJson = Json<Variable>;
export type PrometheusQueryJson = Json<PrometheusQuery>;
export type ThresholdsJson = Json<schema.ThresholdsConfig>;
export type ValueMappingJson = Json<schema.ValueMapping>;
export type TimeSeriesOptionsJson = Json<timeSeries.Options>;
export type TimeSeriesCustomJson = Json<timeSeries.FieldConfig>;
export type StatOptionsJson = Json<stat.Options>;
export type StateTimelineOptionsJson = Json<stateTimeline.Options>;
export type StateTimelineCustomJson = Json<stateTimeline.FieldConfig>;
export type DashboardLinkJson = Json<schema.DashboardLink>;

/** Compile-time proof that this model refines `@grafana/schema`'s `Dashboard`. */
type Assert<T extends true> = T;
export type DashboardRefinesSchema = Assert<Dashboard extends schema.Dashboard ? true : false>;
