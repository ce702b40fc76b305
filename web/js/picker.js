// EditCtrl Object Picker: the keyframe shown in a DOM widget on the node; drag a box or click a point on it and the
// pick is written to the node's `picks` JSON widget (the only thing the server reads, so the workflow runs headless).
// The keyframe comes from the node's own UI output (`editctrl_picker`: a temp PNG and the frame size) after a run;
// with nothing picked yet the node sends it through the `editctrl.picker` message before it stops.
import { api } from "../../../scripts/api.js";
import { app } from "../../../scripts/app.js";
import { addDomWidget, chain, el, fitNode, isolatePointer, keepReportLast, nodeById, redraw, viewUrl } from "./editctrl_dom.js";

const NODE = "EditCtrlObjectPicker";
const SVG = "http://www.w3.org/2000/svg";
const CLICK_PX = 4; // a drag shorter than this (screen pixels) is a click: a point pick
const COLOURS = ["#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#af52de", "#ff9500", "#5ac8fa", "#ff2d55"];

function svgEl(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

/** The picks JSON as {width, height, picks}; `error` is set when the text is not a picks value. */
export function readPicks(text) {
  if (!text || !text.trim()) return { picks: [] };
  try {
    const value = JSON.parse(text);
    if (Array.isArray(value)) return { picks: value };
    if (value && typeof value === "object" && Array.isArray(value.picks ?? [])) {
      return { width: value.width, height: value.height, picks: value.picks ?? [] };
    }
    return { picks: [], error: "picks JSON is neither a list nor {width, height, picks}" };
  } catch (err) {
    return { picks: [], error: `picks JSON does not parse: ${err.message}` };
  }
}

class Picker {
  constructor(node) {
    this.node = node;
    this.frame = null; // {url, width, height, keyframe, frames}
    this.drag = null;
    this.root = el("div", { display: "flex", flexDirection: "column", gap: "4px", width: "100%", height: "100%",
      boxSizing: "border-box", fontSize: "11px", color: "var(--input-text, #ddd)" }, { "data-editctrl": "picker" });
    const bar = el("div", { display: "flex", gap: "4px", alignItems: "center", flex: "0 0 auto" });
    this.status = el("span", { flex: "1 1 auto", overflow: "hidden", whiteSpace: "nowrap", textOverflow: "ellipsis" },
      { "data-editctrl": "picker-status" });
    this.undoButton = this.button("Undo", "picker-undo", () => this.edit((p) => p.slice(0, -1)));
    this.clearButton = this.button("Clear", "picker-clear", () => this.clear());
    bar.append(this.status, this.undoButton, this.clearButton);
    this.svg = svgEl("svg", { "data-editctrl": "picker-stage", preserveAspectRatio: "xMidYMid meet" });
    Object.assign(this.svg.style, { flex: "1 1 auto", width: "100%", minHeight: "0", background: "#222",
      borderRadius: "4px", cursor: "crosshair", touchAction: "none", userSelect: "none" });
    this.image = svgEl("image", { x: 0, y: 0, preserveAspectRatio: "none" });
    this.layer = svgEl("g");
    this.band = svgEl("rect", { fill: "rgba(255,255,255,0.15)", stroke: "#fff", "stroke-dasharray": "4 3",
      "vector-effect": "non-scaling-stroke", visibility: "hidden" });
    this.svg.append(this.image, this.layer, this.band);
    this.root.append(bar, this.svg);
    isolatePointer(this.root);
    this.svg.addEventListener("pointerdown", (e) => this.onDown(e));
    this.svg.addEventListener("pointermove", (e) => this.onMove(e));
    this.svg.addEventListener("pointerup", (e) => this.onUp(e));
    this.svg.addEventListener("pointercancel", () => this.cancel());
    this.widget = addDomWidget(node, "editctrl_picker", this.root, { minHeight: 240 });
    keepReportLast(node);
    this.render();
  }

  button(text, id, onClick) {
    const b = el("button", { padding: "1px 6px", fontSize: "11px", cursor: "pointer" }, { text, "data-editctrl": id, type: "button" });
    b.addEventListener("click", (e) => { e.preventDefault(); onClick(); });
    return b;
  }

  widgetNamed(name) { return this.node.widgets?.find((w) => w.name === name); }
  get picksWidget() { return this.widgetNamed("picks"); }
  get label() { return String(this.widgetNamed("label")?.value ?? "object").trim() || "object"; }

  /** The frame size picks are drawn in: the preview's, else the one saved with the picks, else a placeholder. */
  size(state) {
    if (this.frame) return [this.frame.width, this.frame.height];
    if (state.width > 0 && state.height > 0) return [state.width, state.height];
    return [192, 128];
  }

  setFrame(entry) {
    if (!entry) return;
    this.frame = { url: viewUrl(entry), width: entry.width, height: entry.height, keyframe: entry.keyframe, frames: entry.frames };
    this.render();
  }

  /** Apply `change` to the pick list and write the result to the `picks` widget (as the user would type it). */
  edit(change) {
    const widget = this.picksWidget;
    if (!widget) return;
    const state = readPicks(widget.value);
    if (state.error) {
      // never overwrite text the user is still typing: the status line says what is wrong with it
      this.status.textContent = `${state.error} — fix or clear the picks text first`;
      return;
    }
    const [width, height] = this.size(state);
    // picks saved for another frame size are rescaled onto this one, as the node itself would read them
    const sx = state.width > 0 ? width / state.width : 1;
    const sy = state.height > 0 ? height / state.height : 1;
    const scaled = state.picks.map((p) => ({
      ...p,
      ...(p.box ? { box: [p.box[0] * sx, p.box[1] * sy, p.box[2] * sx, p.box[3] * sy].map(Math.round) } : {}),
      ...(p.point ? { point: [p.point[0] * sx, p.point[1] * sy].map(Math.round) } : {}),
    }));
    const text = JSON.stringify({ width, height, picks: change(scaled) });
    widget.value = text;
    widget.callback?.(text, app.canvas, this.node);
    this.node.graph?.change?.();
    this.render();
    redraw(this.node);
  }

  /** Empty the pick list (also when the text does not parse). */
  clear() {
    const widget = this.picksWidget;
    if (!widget) return;
    widget.value = "[]";
    widget.callback?.("[]", app.canvas, this.node);
    this.edit(() => []);
  }

  /** A pointer event's position in frame pixels (the SVG fits the frame with "meet"), clamped to the frame. */
  toFrame(e) {
    const [width, height] = this.size(readPicks(this.picksWidget?.value));
    const r = this.svg.getBoundingClientRect();
    const scale = Math.min(r.width / width, r.height / height);
    const ox = (r.width - width * scale) / 2;
    const oy = (r.height - height * scale) / 2;
    const x = (e.clientX - r.left - ox) / scale;
    const y = (e.clientY - r.top - oy) / scale;
    return { x: Math.min(Math.max(x, 0), width), y: Math.min(Math.max(y, 0), height), sx: e.clientX, sy: e.clientY,
      inside: x >= 0 && y >= 0 && x <= width && y <= height };
  }

  onDown(e) {
    if (e.button !== 0) return;
    const p = this.toFrame(e);
    if (!p.inside) return;
    e.preventDefault();
    this.svg.setPointerCapture?.(e.pointerId);
    this.drag = { start: p, end: p };
  }

  onMove(e) {
    if (!this.drag) return;
    this.drag.end = this.toFrame(e);
    const { start, end } = this.drag;
    Object.entries({ x: Math.min(start.x, end.x), y: Math.min(start.y, end.y), width: Math.abs(end.x - start.x),
      height: Math.abs(end.y - start.y) }).forEach(([k, v]) => this.band.setAttribute(k, v));
    this.band.setAttribute("visibility", "visible");
  }

  onUp(e) {
    if (!this.drag) return;
    const start = this.drag.start;
    const end = this.toFrame(e);
    this.cancel();
    const label = this.label;
    const moved = Math.hypot(end.sx - start.sx, end.sy - start.sy);
    if (moved < CLICK_PX) {
      this.edit((picks) => [...picks, { label, point: [Math.round(start.x), Math.round(start.y)] }]);
      return;
    }
    const box = [Math.min(start.x, end.x), Math.min(start.y, end.y), Math.max(start.x, end.x), Math.max(start.y, end.y)];
    const rounded = [Math.floor(box[0]), Math.floor(box[1]), Math.ceil(box[2]), Math.ceil(box[3])];
    if (rounded[2] - rounded[0] < 1 || rounded[3] - rounded[1] < 1) return;
    this.edit((picks) => [...picks, { label, box: rounded }]);
  }

  cancel() {
    this.drag = null;
    this.band.setAttribute("visibility", "hidden");
  }

  /** Draw the frame and every pick from the `picks` widget (the widget is the single source of truth). */
  render() {
    const state = readPicks(this.picksWidget?.value);
    const [width, height] = this.size(state);
    this.svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    for (const [k, v] of Object.entries({ width, height })) this.image.setAttribute(k, v);
    if (this.frame) this.image.setAttribute("href", this.frame.url);
    else this.image.removeAttribute("href");
    this.layer.replaceChildren();
    if (!this.frame) {
      const hint = svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle", "dominant-baseline": "middle",
        fill: "#999", "font-size": Math.max(8, width / 22) });
      hint.textContent = "Run once to show the keyframe here";
      this.layer.append(hint);
    }
    const sx = state.width > 0 ? width / state.width : 1;
    const sy = state.height > 0 ? height / state.height : 1;
    const labels = [];
    state.picks.forEach((p, i) => {
      if (!p || typeof p !== "object") return;
      const label = String(p.label ?? this.label);
      if (!labels.includes(label)) labels.push(label);
      const colour = COLOURS[labels.indexOf(label) % COLOURS.length];
      const group = svgEl("g", { "data-pick": i });
      let tx;
      let ty;
      if (Array.isArray(p.box) && p.box.length === 4) {
        const [x1, y1, x2, y2] = [p.box[0] * sx, p.box[1] * sy, p.box[2] * sx, p.box[3] * sy];
        group.append(svgEl("rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1, fill: "none", stroke: colour,
          "stroke-width": 2, "vector-effect": "non-scaling-stroke" }));
        [tx, ty] = [x1 + 2, y1 + 2];
      } else if (Array.isArray(p.point) && p.point.length === 2) {
        const [x, y] = [p.point[0] * sx, p.point[1] * sy];
        group.append(svgEl("circle", { cx: x, cy: y, r: Math.max(2, width / 80), fill: colour, stroke: "#fff",
          "stroke-width": 1, "vector-effect": "non-scaling-stroke" }));
        [tx, ty] = [x + 4, y - 4];
      } else return;
      const text = svgEl("text", { x: tx, y: ty, fill: colour, "font-size": Math.max(7, width / 28),
        "dominant-baseline": "hanging", stroke: "#000", "stroke-width": 0.4 });
      text.textContent = `${i + 1} ${label}`;
      group.append(text);
      this.layer.append(group);
    });
    const where = this.frame ? `keyframe ${this.frame.keyframe} of ${this.frame.frames} (${this.frame.width}×${this.frame.height})` : "no keyframe yet";
    this.status.textContent = state.error ? state.error : `${state.picks.length} pick(s) · ${where} · drag = box, click = point`;
    this.status.style.color = state.error ? "#ff6b6b" : "";
    this.undoButton.disabled = !state.picks.length;
    this.clearButton.disabled = !state.picks.length && !state.error;
  }
}

app.registerExtension({
  name: "EditCtrl.ObjectPicker",
  async setup() {
    // a run that stopped because nothing was picked still shows its keyframe
    api.addEventListener("editctrl.picker", ({ detail }) => {
      const node = nodeById(detail?.node);
      node?.editctrlPicker?.setFrame(detail.editctrl_picker?.[0]);
      node?.editctrlReport?.show(detail.text);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      this.editctrlPicker = new Picker(this);
      fitNode(this);
      const picks = this.editctrlPicker.picksWidget;
      if (picks) {
        const picker = this.editctrlPicker;
        chain(picks, "callback", () => picker.render());
        picks.element?.addEventListener?.("input", () => picker.render());
      }
    });
    chain(nodeType.prototype, "onConfigure", function () { this.editctrlPicker?.render(); });
    chain(nodeType.prototype, "onExecuted", function (output) {
      this.editctrlPicker?.setFrame(output?.editctrl_picker?.[0]);
    });
  },
});
