/* Every view of the app, in navigation order (the contract is documented at the top of
 * core/router.js). To add a view: write views/<name>.js with a default-exported component
 * and add one line here. */
import Overview from "./overview.js";

export const VIEWS = [
  { path: "", title: "Overview", role: "viewer", component: Overview },
];
