/* sparse_coding graph viewer: one canvas, no libraries, no network (the parts: docs/internals.md).
 * scGraphViewer.init(root, data) builds toolbar, canvas and side panel in `root` from viewer.py's data:
 *   nodes: [{id, hook, row, column, error, activation, attribution, contexts, up, down, explanation,
 *            url, steer, runs}], edges: [[source, target, effect, runs]], rows, runs, caption, legend, tokens
 * What a test reads is on root.dataset (visibleNodes, visibleEdges, threshold, searchMatches, selected,
 * pathNodes, zoom, firstRenderMs, applyMs) and root.scViewer. */
class Viewer {
  constructor(root, data) {
    this.root = root;
    this.data = data;
    this.state = new ViewState(data);
    this.lines = [];
    this.buildDom();
    this.camera = new Camera(this.stage);
    this.painter = new Painter(this.canvas, data, this.state, this.camera);
    this.panel = new SidePanel(this.side, root, data, this.state, {
      select: (i, centre) => this.select(i, centre),
      toggleRun: (i, on) => { this.state.runsOn[i] = on; this.apply(); },
    });
    this.bindBar();
    this.bindCanvas();
    this.open();
    root.scViewer = this.testApi();
  }

  buildDom() {
    const { root } = this;
    root.textContent = "";
    const bar = el("div", "sc-bar");
    const placeholder = "search id or context token";
    this.search = Object.assign(el("input", "sc-search"), { type: "search", placeholder });
    this.slider = Object.assign(el("input", "sc-slider"), { type: "range", min: 0, max: SLIDER_STEPS, value: 0 });
    this.thresholdText = el("span", "sc-threshold");
    this.errorBox = Object.assign(el("input"), { type: "checkbox", checked: true, className: "sc-errors" });
    const errorLabel = el("label", "sc-check");
    errorLabel.append(this.errorBox, " error nodes");
    this.fitButton = el("button", "sc-fit", "fit");
    this.allButton = el("button", "sc-all", "all edges");
    this.counts = el("span", "sc-counts");
    bar.append(this.search, el("span", "sc-label", "|effect| ≥"), this.slider, this.thresholdText,
      this.allButton, errorLabel, this.fitButton, this.counts);
    const main = el("div", "sc-main");
    this.stage = el("div", "sc-stage");
    this.canvas = el("canvas", "sc-canvas");
    this.tip = el("div", "sc-tip");
    this.stage.append(this.canvas, this.tip);
    this.side = el("div", "sc-side");
    main.append(this.stage, this.side);
    root.append(bar, main);
  }

  /* The first view: the strongest edges of a big graph, wrapped to the stage's width. */
  open() {
    this.painter.resize(this.stage);
    const width = (this.stage.clientWidth || 800) / LEGIBLE_ZOOM - LABEL_W;
    this.perLine = Math.max(4, Math.floor(width / (NODE_W + GAP_X)));
    const step = this.state.openingStep();
    if (step !== null) this.slider.value = step;
    this.apply();
    this.camera.firstView(this.extent(), Boolean(this.lines.columns));
    this.draw();
  }

  /* Filters, lays out, traces the selection's paths, refreshes the counts and panel, redraws. */
  apply() {
    const t0 = performance.now();
    const { state, data, root } = this;
    const { visibleNodes, visibleEdges } = state.filter();
    this.lines = data.tokens
      ? tokenLayout(data.nodes, data.rows.length, state.nodeOn, data.tokens.length)
      : forwardLayout(data.nodes, data.edges, data.rows.length, state.nodeOn, state.edgeOn, this.perLine);
    state.trace();
    this.thresholdText.textContent = fmt(state.threshold);
    this.counts.textContent =
      `${visibleNodes} / ${data.nodes.length} nodes, ${visibleEdges} / ${data.edges.length} edges`;
    root.dataset.visibleNodes = visibleNodes;
    root.dataset.visibleEdges = visibleEdges;
    root.dataset.threshold = String(state.threshold);
    root.dataset.pathNodes = state.pathNodes ? state.pathNodes.reduce((count, on) => count + on, 0) : "";
    if (state.selected >= 0) this.panel.showNode(state.selected);
    else this.panel.showInfo();
    this.draw();
    root.dataset.applyMs = (performance.now() - t0).toFixed(2);
  }

  draw() {
    this.painter.draw(this.lines);
    this.root.dataset.zoom = this.camera.zoom.toFixed(3);
  }

  redrawSoon() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }

  extent() {
    return extent(this.data.nodes, this.state.nodeOn, this.lines);
  }

  select(i, centre) {
    this.state.selected = i;
    this.root.dataset.selected = i >= 0 ? this.data.nodes[i].id : "";
    if (i >= 0 && centre) this.camera.centreOn(this.data.nodes[i]);
    this.apply();
  }

  runSearch() {
    const { state } = this;
    state.search(this.search.value);
    this.root.dataset.searchMatches = state.matches ? state.matches.length : "";
    if (state.selected < 0) this.panel.showInfo();
    this.draw();
  }

  bindBar() {
    const { slider, state } = this;
    slider.addEventListener("input", () => { state.setStep(Number(slider.value)); this.apply(); });
    this.errorBox.addEventListener("change", () => { state.showErrors = this.errorBox.checked; this.apply(); });
    this.fitButton.addEventListener("click", () => { this.camera.fit(this.extent(), 2); this.draw(); });
    this.allButton.addEventListener("click", () => {
      slider.value = 0; state.threshold = 0; this.apply(); this.camera.fit(this.extent(), 2); this.draw();
    });
    this.search.addEventListener("input", () => this.runSearch());
    this.search.addEventListener("keydown", (evt) => {
      if (evt.key === "Enter" && state.matches?.length) this.select(state.matches[0], true);
    });
  }

  /* Drag to pan, wheel to zoom, click to select, hover for a tip. */
  bindCanvas() {
    const { canvas, camera } = this;
    let drag = null;
    canvas.addEventListener("mousedown", (evt) => {
      drag = { x: evt.clientX, y: evt.clientY, tx: camera.tx, ty: camera.ty, moved: false };
    });
    window.addEventListener("mousemove", (evt) => {
      if (!drag) return;
      const dx = evt.clientX - drag.x, dy = evt.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      camera.tx = drag.tx + dx; camera.ty = drag.ty + dy;
      this.redrawSoon();
    });
    window.addEventListener("mouseup", (evt) => {
      if (drag && !drag.moved && evt.target === canvas) {
        this.select(nodeAt(this.data.nodes, this.lines, camera.world(evt, canvas)), false);
      }
      drag = null;
    });
    canvas.addEventListener("mousemove", (evt) => { if (!drag) this.hover(evt); });
    canvas.addEventListener("mouseleave", () => this.showTip({ clientX: 0, clientY: 0 }, []));
    canvas.addEventListener("wheel", (evt) => {
      evt.preventDefault();
      const box = canvas.getBoundingClientRect();
      camera.zoomAt(evt.clientX - box.left, evt.clientY - box.top, Math.exp(-evt.deltaY * 0.0015));
      this.redrawSoon();
    }, { passive: false });
    const resized = () => { this.painter.resize(this.stage); this.draw(); };
    if (window.ResizeObserver) new ResizeObserver(resized).observe(this.stage);
  }

  hover(evt) {
    const { state, data: { nodes, edges } } = this;
    const p = this.camera.world(evt, this.canvas), i = nodeAt(nodes, this.lines, p);
    const k = i < 0 ? edgeAt(nodes, edges, state.edgeOn, p, 5 / this.camera.zoom) : -1;
    if (i !== state.hoverNode || k !== state.hoverEdge) {
      state.hoverNode = i; state.hoverEdge = k;
      this.redrawSoon();
    }
    if (i >= 0) {
      const n = nodes[i];
      this.showTip(evt, [n.id, `hook ${n.hook || "n/a"}`, `activation ${fmt(n.activation)}`,
        `attribution ${fmt(n.attribution)}`]);
    } else if (k >= 0) {
      const [s, t, effect] = edges[k];
      this.showTip(evt, [`${nodes[s].id} → ${nodes[t].id}`, `effect ${fmt(effect)}`]);
    } else {
      this.showTip(evt, []);
    }
  }

  showTip(evt, lines) {
    const box = this.stage.getBoundingClientRect(), tip = this.tip;
    tip.textContent = lines.join("\n");
    tip.style.display = lines.length ? "block" : "none";
    tip.style.left = `${evt.clientX - box.left + 14}px`;
    tip.style.top = `${evt.clientY - box.top + 14}px`;
  }

  /* Screen positions for tests: a node's centre, every shown box, and centring on a node. */
  testApi() {
    const { canvas, camera, state } = this, nodes = this.data.nodes;
    const index = (id) => nodes.findIndex((n) => n.id === id);
    return {
      screenPoint: (id) => {
        const box = canvas.getBoundingClientRect(), n = nodes[index(id)];
        return [box.left + camera.tx + (n.x + NODE_W / 2) * camera.zoom,
          box.top + camera.ty + (n.y + NODE_H / 2) * camera.zoom];
      },
      screenBoxes: () => {
        const box = canvas.getBoundingClientRect();
        return nodes.filter((n, i) => state.nodeOn[i] && n.placed).map((n) => [n.id,
          box.left + camera.tx + n.x * camera.zoom, box.top + camera.ty + n.y * camera.zoom,
          NODE_W * camera.zoom, NODE_H * camera.zoom]);
      },
      centreOn: (id) => { camera.centreOn(nodes[index(id)]); this.draw(); },
    };
  }
}

window.scGraphViewer = { init: (root, data) => { new Viewer(root, data); } };
