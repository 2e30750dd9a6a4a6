// The shape a dashboard's JSON must have by Grafana's own types (npm @grafana/schema): the
// dashboard model Grafana's frontend loads, and for each panel type the dashboard uses, the
// options and field config its panel plugin declares. tests/unit/test_dashboard.py writes the
// dashboard as an object literal that `satisfies` these types and runs `tsc --noEmit --strict`:
// a wrong type, a missing required field or a field Grafana does not know is a compiler error.

import type { Dashboard, Panel, RowPanel } from "@grafana/schema";
import type * as stat from "@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen";
import type * as timeseries from "@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen";

/** `T` as JSON writes it: a string enum as its values (JSON has no enum members). */
export type Json<T> = T extends string
  ? `${T}`
  : T extends readonly (infer U)[]
    ? Json<U>[]
    : T extends object
      ? { [K in keyof T]: Json<T[K]> }
      : T;

/** What a panel stores of its plugin's options: any part (Grafana fills in the defaults). */
type Stored<T> = T extends readonly (infer U)[]
  ? Stored<U>[]
  : T extends object
    ? { [K in keyof T]?: Stored<T[K]> }
    : T;

/** The panel plugins the dashboard uses: their options and their fields' custom config. */
interface Plugins {
  stat: { options: stat.Options; custom: Record<string, never> };
  timeseries: { options: timeseries.Options; custom: timeseries.FieldConfig };
}

type PluginPanel<K extends keyof Plugins> = Omit<Panel, "type" | "options" | "fieldConfig"> & {
  type: K;
  options?: Stored<Plugins[K]["options"]>;
  fieldConfig?: Omit<NonNullable<Panel["fieldConfig"]>, "defaults"> & {
    defaults: Omit<NonNullable<Panel["fieldConfig"]>["defaults"], "custom"> & {
      custom?: Stored<Plugins[K]["custom"]>;
    };
  };
};

/** A row, or a panel of a plugin of {@link Plugins} (any other type is an error). */
export type CheckedPanel = Json<RowPanel> | { [K in keyof Plugins]: Json<PluginPanel<K>> }[keyof Plugins];

/** Grafana's dashboard, its panels checked by their plugins' types too. */
export type CheckedDashboard = Json<Omit<Dashboard, "panels">> & { panels?: CheckedPanel[] };

/** Compiles only while a {@link CheckedDashboard} is a Grafana dashboard: the narrowing above
 * adds nothing Grafana's own type does not allow. */
export function asGrafanaDashboard(dashboard: CheckedDashboard): Json<Dashboard> {
  return dashboard;
}
