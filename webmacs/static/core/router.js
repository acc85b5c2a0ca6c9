/* Hash routes and the view contract.
 *
 * A view is one ES module under webmacs/static/views/ whose default export is a Preact
 * component; it is listed once, in views/index.js, as
 *
 *     { path: "rules", title: "Rules", role: "admin", component: RulesView, nav: true }
 *
 *   path       the route: #/rules, and #/rules/<a>/<b> gives the view params ["<a>", "<b>"];
 *              "" is the Overview (#/)
 *   role       the least role that sees the view at all ("viewer", "operator", "admin"):
 *              it is hidden from the navigation of other roles and not rendered for them
 *   nav        false keeps it out of the navigation (still reachable by its route)
 *
 * The component gets props { session, params }: session.api is the REST client
 * (core/api.js: get/post/put/del/all, errors carry the server's detail), session.user the
 * signed-in user, session.can(role) whether the user has at least that role (write
 * actions are rendered only when session.can("operator")), session.live the live
 * connection (core/live.js: subscribe, latest). Shared widgets are in core/ui.js.
 */
import { useEffect, useState } from "./html.js";

const RANK = { viewer: 1, operator: 2, admin: 3 };

export function hasRole(user, role) {
  return !!user && (RANK[user.role] || 0) >= (RANK[role || "viewer"] || 1);
}

export function parseHash(hash) {
  const raw = (hash || "").replace(/^#\/?/, "");
  const parts = raw.split("/").filter(Boolean).map(decodeURIComponent);
  return { path: parts[0] || "", params: parts.slice(1) };
}

export function href(path, ...params) {
  return "#/" + [path].concat(params.map(encodeURIComponent)).filter(Boolean).join("/");
}

export function navigate(path, ...params) {
  window.location.hash = href(path, ...params);
}

export function useRoute() {
  const [route, setRoute] = useState(parseHash(window.location.hash));
  useEffect(() => {
    const on = () => setRoute(parseHash(window.location.hash));
    window.addEventListener("hashchange", on);
    return () => window.removeEventListener("hashchange", on);
  }, []);
  return route;
}

export function findView(views, path) {
  return views.find((v) => v.path === path) || null;
}
