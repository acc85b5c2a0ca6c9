/* Every view of the app, in navigation order (the contract is documented at the top of
 * core/router.js). To add a view: write views/<name>.js with a default-exported component
 * and add one line here. */
import Overview from "./overview.js";
import Dashboards from "./dashboards.js";
import Plugins from "./plugins.js";
import Events from "./events.js";
import Experiments from "./experiments.js";
import Datapoints from "./datapoints.js";
import Rules from "./rules.js";
import Webhooks from "./webhooks.js";
import Logs from "./logs.js";
import Tokens from "./tokens.js";
import Users from "./users.js";
import Ota from "./ota.js";
import Packages from "./packages.js";
import System from "./system.js";

export const VIEWS = [
  { path: "", title: "Overview", role: "viewer", component: Overview },
  { path: "dashboards", title: "Dashboards", role: "viewer", component: Dashboards },
  { path: "plugins", title: "Plugins", role: "viewer", component: Plugins },
  { path: "events", title: "Events", role: "viewer", component: Events },
  { path: "experiments", title: "Experiments", role: "viewer", component: Experiments },
  { path: "datapoints", title: "Datapoints", role: "viewer", component: Datapoints },
  { path: "logs", title: "Logs", role: "viewer", component: Logs },
  { path: "tokens", title: "API tokens", role: "operator", component: Tokens },
  { path: "rules", title: "Rules", role: "admin", component: Rules },
  { path: "webhooks", title: "Webhooks", role: "admin", component: Webhooks },
  { path: "users", title: "Users", role: "admin", component: Users },
  { path: "ota", title: "OTA updates", role: "admin", component: Ota },
  { path: "packages", title: "Packages", role: "admin", component: Packages, nav: false },
  { path: "system", title: "System", role: "admin", component: System },
];
