// EditCtrl Mask Overlay: the overlay frames the node sends as its preview (`images` of its UI output) played in a
// small DOM player on the node (play/pause, frame slider), instead of the frontend's still canvas preview.
import { app } from "../../../scripts/app.js";
import { addDomWidget, chain, el, fitNode, isolatePointer, keepReportLast, viewUrl } from "./editctrl_dom.js";

const NODE = "EditCtrlMaskOverlay";
const FPS = 12;

class OverlayPlayer {
  constructor(node) {
    this.node = node;
    this.frames = [];
    this.index = 0;
    this.timer = null;
    this.root = el("div", { display: "flex", flexDirection: "column", gap: "3px", width: "100%", height: "100%",
      boxSizing: "border-box", fontSize: "11px", color: "var(--input-text, #ddd)" }, { "data-editctrl": "overlay-player" });
    this.screen = el("img", { flex: "1 1 auto", minHeight: "0", width: "100%", objectFit: "contain", background: "#222",
      borderRadius: "4px" }, { "data-editctrl": "overlay-frame", alt: "" });
    const bar = el("div", { display: "flex", gap: "4px", alignItems: "center", flex: "0 0 auto" });
    this.playButton = el("button", { padding: "1px 6px", fontSize: "11px", cursor: "pointer", minWidth: "44px" },
      { type: "button", text: "Play", "data-editctrl": "overlay-play" });
    this.slider = el("input", { flex: "1 1 auto", minWidth: "0" }, { type: "range", min: 0, max: 0, value: 0, step: 1,
      "data-editctrl": "overlay-slider" });
    this.counter = el("span", { minWidth: "52px", textAlign: "right" }, { "data-editctrl": "overlay-counter", text: "no frames" });
    bar.append(this.playButton, this.slider, this.counter);
    this.root.append(this.screen, bar);
    isolatePointer(this.root);
    this.playButton.addEventListener("click", (e) => { e.preventDefault(); this.playing ? this.pause() : this.play(); });
    this.slider.addEventListener("input", () => { this.pause(); this.show(Number(this.slider.value)); });
    this.widget = addDomWidget(node, "editctrl_overlay_player", this.root, { minHeight: 180 });
    keepReportLast(node);
    this.setFrames([]);
  }

  get playing() { return this.timer !== null; }

  /** New frames ({filename, subfolder, type} refs): preloaded, shown from the first, playing when more than one. */
  setFrames(refs) {
    this.pause();
    this.frames = refs.map((ref) => {
      const image = new Image();
      image.src = viewUrl(ref);
      return image;
    });
    this.slider.max = Math.max(0, this.frames.length - 1);
    this.playButton.disabled = this.frames.length < 2;
    this.show(0);
    if (this.frames.length > 1) this.play();
  }

  show(index) {
    if (!this.frames.length) {
      this.screen.removeAttribute("src");
      this.counter.textContent = "no frames";
      return;
    }
    this.index = ((index % this.frames.length) + this.frames.length) % this.frames.length;
    this.screen.src = this.frames[this.index].src;
    this.slider.value = this.index;
    this.counter.textContent = `${this.index + 1} / ${this.frames.length}`;
    this.root.dataset.frame = String(this.index);
  }

  play() {
    if (this.frames.length < 2 || this.playing) return;
    this.timer = setInterval(() => this.show(this.index + 1), 1000 / FPS);
    this.playButton.textContent = "Pause";
    this.root.dataset.playing = "true";
  }

  pause() {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.playButton.textContent = "Play";
    this.root.dataset.playing = "false";
  }
}

app.registerExtension({
  name: "EditCtrl.MaskOverlayPlayer",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      this.editctrlPlayer = new OverlayPlayer(this);
      fitNode(this);
      // the player shows the frames: skip the frontend's still image drawn on the canvas under the widgets
      this.onDrawBackground = function () {};
    });
    chain(nodeType.prototype, "onExecuted", function (output) {
      if (Array.isArray(output?.images)) this.editctrlPlayer?.setFrames(output.images);
    });
    chain(nodeType.prototype, "onRemoved", function () { this.editctrlPlayer?.pause(); });
  },
});
