// The text EditCtrl nodes report after a run (their `text` UI output: the sampler's mode and geometry, the encoder's
// padding, SAM and detection summaries, warnings) shown on the node in a read-only DOM widget.
import { app } from "../../../scripts/app.js";
import { addDomWidget, chain, el, fitNode, isolatePointer, REPORT_WIDGET } from "./editctrl_dom.js";

/** Nodes that always carry a report box (so their size is known before a run); others get one on first text. */
export const REPORT_NODES = new Set([
  "EditCtrlSampler", "EditCtrlVAEEncode", "EditCtrlObjectPicker", "EditCtrlSAMRefine", "EditCtrlDetectObjects",
  "EditCtrlDetectionsFromJSON", "EditCtrlSelectObjects", "EditCtrlTMATokens", "EditCtrlLoraLoader",
  "EditCtrlAdapterLoader",
]);
export const REPORT_HEIGHT = 64;

class Report {
  constructor(node) {
    this.box = el("div", { width: "100%", height: "100%", boxSizing: "border-box", overflow: "auto", padding: "3px 5px",
      whiteSpace: "pre-wrap", wordBreak: "break-word", fontFamily: "monospace", fontSize: "10px", lineHeight: "1.3",
      background: "var(--comfy-input-bg, #222)", color: "var(--input-text, #ddd)", borderRadius: "4px", opacity: "0.6" },
    { "data-editctrl": "report", text: "report: shown after a run" });
    isolatePointer(this.box);
    this.box.addEventListener("wheel", (e) => e.stopPropagation());
    this.widget = addDomWidget(node, REPORT_WIDGET, this.box, { minHeight: REPORT_HEIGHT, maxHeight: 240 });
  }

  show(text) {
    const lines = (Array.isArray(text) ? text : [text]).filter((t) => t !== undefined && t !== null && `${t}` !== "");
    if (!lines.length) return;
    this.box.textContent = lines.join("\n");
    this.box.style.opacity = "1";
    this.box.dataset.filled = "true";
  }
}

app.registerExtension({
  name: "EditCtrl.Reports",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!String(nodeData?.name ?? "").startsWith("EditCtrl")) return;
    const always = REPORT_NODES.has(nodeData.name);
    chain(nodeType.prototype, "onNodeCreated", function () {
      if (always) this.editctrlReport = new Report(this);
      fitNode(this);
    });
    chain(nodeType.prototype, "onExecuted", function (output) {
      if (!output?.text) return;
      if (!this.editctrlReport) {
        this.editctrlReport = new Report(this);
        fitNode(this);
      }
      this.editctrlReport.show(output.text);
    });
  },
});
