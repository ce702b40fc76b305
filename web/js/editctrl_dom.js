// Shared helpers of the EditCtrl web extension: DOM widgets that work in both node renderers (LiteGraph canvas and
// Vue nodes), /view URLs of saved previews, and finding a node from a server message.
import { api } from "../../../scripts/api.js";
import { app } from "../../../scripts/app.js";

/** The URL of a saved file ({filename, subfolder, type}) as the server's /view serves it. */
export function viewUrl(ref) {
  const params = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder ?? "", type: ref.type ?? "output" });
  return api.apiURL(`/view?${params.toString()}`);
}

/** An element with inline styles (no stylesheet to load). */
export function el(tag, style = {}, attrs = {}) {
  const node = document.createElement(tag);
  Object.assign(node.style, style);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  return node;
}

/**
 * Add a DOM widget that is never saved in widgets_values nor sent in the prompt (it is appended after the node's
 * own widgets, so the saved values keep their positions). `minHeight` reserves its room in the node's size.
 */
export function addDomWidget(node, name, element, { minHeight = 60, maxHeight } = {}) {
  const widget = node.addDOMWidget(name, "editctrl", element, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => undefined,
    setValue: () => {},
    getMinHeight: () => minHeight,
    ...(maxHeight ? { getMaxHeight: () => maxHeight } : {}),
  });
  widget.serialize = false;
  widget.serializeValue = () => undefined;
  return widget;
}

export const REPORT_WIDGET = "editctrl_report";

/**
 * Move the report box (reports.js) after the node's other widgets: the extensions' node hooks run in the order their
 * scripts finished loading, and the widget order must not depend on it (it sets the node's layout).
 */
export function keepReportLast(node) {
  const i = node.widgets?.findIndex((w) => w.name === REPORT_WIDGET) ?? -1;
  if (i >= 0 && i < node.widgets.length - 1) node.widgets.push(...node.widgets.splice(i, 1));
}

/** Keep pointer/wheel events inside the element from reaching the graph (no node drag, no canvas pan). */
export function isolatePointer(element) {
  for (const type of ["pointerdown", "pointermove", "pointerup", "mousedown", "click", "dblclick", "contextmenu"]) {
    element.addEventListener(type, (e) => e.stopPropagation());
  }
}

/** The graph node with this id (as the server names it in messages), or null. */
export function nodeById(id) {
  const graph = app.graph ?? app.rootGraph;
  return graph?.getNodeById?.(Number(id)) ?? graph?.getNodeById?.(id) ?? null;
}

/** Chain a callback onto an object's method (the original runs first). */
export function chain(target, method, after) {
  const original = target[method];
  target[method] = function (...args) {
    const result = original?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}

/** Grow a node to fit its widgets (after DOM widgets were added to a new node; a loaded node keeps its saved size). */
export function fitNode(node) {
  const need = node.computeSize?.();
  if (!need) return;
  node.setSize?.([Math.max(node.size[0], need[0]), Math.max(node.size[1], need[1])]);
}

export function redraw(node) {
  node?.setDirtyCanvas?.(true, true);
  (node?.graph ?? app.graph)?.setDirtyCanvas?.(true, true);
}
