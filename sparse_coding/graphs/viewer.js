/* sparse_coding graph viewer: one canvas, no libraries, no network.
 *
 * scGraphViewer.init(root, data) builds the toolbar, the canvas and the side
 * panel inside `root` from the page data written by viewer.py:
 *   data.nodes: [{id, hook, row, error, activation, attribution, contexts,
 *                 up, down, explanation, url, steer, runs}]
 *   data.edges: [[sourceIndex, targetIndex, effect, runs]]
 *   data.rows, data.runs, data.caption (lines), data.legend, data.tokens
 * Positioned nodes (id@position, with data.tokens the prompt's tokens; a
 * node's column is its position, a trace.py logit's the last token's) are
 * laid out on a token axis instead: one column per position, in token order,
 * rows from the first (token embeddings) at the bottom to the last (logits)
 * at the top, the tokens written under the lowest row.
 * It opens on a readable view of any graph: above INITIAL_EDGES edges the
 * slider starts at the |effect| that shows the strongest INITIAL_EDGES (one
 * click on "all edges" or the slider shows the rest); the shown nodes are
 * laid out again on every change, each site and layer in forward order and
 * wrapped into lines that fit the window at a legible zoom; the view starts
 * at the top, at that zoom or larger.
 * Every label is set with textContent or drawn with fillText, so a token
 * such as "<script>" is shown, never parsed. The state a test needs is kept
 * on root.dataset (visibleNodes, visibleEdges, threshold, searchMatches,
 * selected, pathNodes, firstRenderMs, applyMs).
 */
(function () {
  "use strict";
  var NODE_W = 130, NODE_H = 34, GAP_X = 14, ROW_H = 96, SLIDER_STEPS = 1000;
  var EMPTY_W = 50;  /* a token column without nodes */
  var INITIAL_EDGES = 300, LEGIBLE_ZOOM = 0.8, MAX_ZOOM = 1.5, LABEL_W = 90;
  var BLUE = [33, 102, 172], RED = [178, 24, 43];

  function el(tag, className, text) {
    var e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function fmt(x) {
    return x === null || x === undefined ? "n/a" : Number(x).toPrecision(3).replace(/\.?0+(e|$)/, "$1");
  }

  /* Tokens as drawn in the static image: control characters as their Unicode pictures. */
  function visible(token) {
    return String(token).replace(/[\u0000-\u001f]/g, function (c) {
      return String.fromCharCode(0x2400 + c.charCodeAt(0));
    });
  }

  function rgba(rgb, alpha) {
    return "rgba(" + rgb[0] + "," + rgb[1] + "," + rgb[2] + "," + alpha.toFixed(3) + ")";
  }

  /* The shown nodes in lines: each row (site and layer) in forward order, wrapped after `perLine`
   * boxes. A row that fits one line is ordered by the mean x of its upstream neighbours (fewer
   * crossings); a wrapped row puts its strongest nodes (summed |effect| of shown edges) first. */
  function layout(nodes, edges, nRows, nodeOn, edgeOn, perLine) {
    var byRow = [], up = nodes.map(function () { return []; });
    var strength = new Float64Array(nodes.length), lines = [];
    for (var r = 0; r < nRows; r++) byRow.push([]);
    nodes.forEach(function (n, i) { n.placed = false; if (nodeOn[i]) byRow[n.row].push(i); });
    edges.forEach(function (e, k) {
      if (!edgeOn[k]) return;
      up[e[1]].push(e[0]);
      strength[e[0]] += Math.abs(e[2]); strength[e[1]] += Math.abs(e[2]);
    });
    byRow.forEach(function (row, r) {
      if (!row.length) return;
      var key = row.map(function (i, k) {
        if (row.length > perLine) return -strength[i];
        var xs = up[i].filter(function (j) { return nodes[j].placed; });
        if (!xs.length) return k * (NODE_W + GAP_X);
        return xs.reduce(function (s, j) { return s + nodes[j].x; }, 0) / xs.length;
      });
      var order = row.map(function (i, k) { return k; });
      order.sort(function (a, b) { return key[a] - key[b] || a - b; });
      for (var start = 0; start < order.length; start += perLine) {
        var chunk = order.slice(start, start + perLine).map(function (k) { return row[k]; });
        var width = chunk.length * (NODE_W + GAP_X) - GAP_X, y = lines.length * ROW_H;
        chunk.forEach(function (i, pos) {
          nodes[i].x = pos * (NODE_W + GAP_X) - width / 2; nodes[i].y = y; nodes[i].placed = true;
        });
        lines.push({ row: r, first: start === 0, nodes: chunk, y: y });
      }
    });
    return lines;
  }

  /* Positioned nodes: rows in forward order from the bottom up, each token a column as wide as its
   * fullest row. */
  function tokenLayout(nodes, nRows, nodeOn, nTokens) {
    var byRow = [], width = new Array(nTokens).fill(0), lines = [], start = [];
    for (var r = 0; r < nRows; r++) byRow.push([]);
    nodes.forEach(function (n, i) { n.placed = false; if (nodeOn[i]) byRow[n.row].push(i); });
    byRow.forEach(function (row) {
      var count = {};
      row.forEach(function (i) {
        var p = nodes[i].column;
        count[p] = (count[p] || 0) + 1;
        width[p] = Math.max(width[p], count[p]);
      });
    });
    var x = 0;
    var span = width.map(function (w) { return w ? w * (NODE_W + GAP_X) - GAP_X : EMPTY_W; });
    span.forEach(function (w, p) { start[p] = x; x += w + 2 * GAP_X; });
    byRow.slice().reverse().forEach(function (row, j) {
      if (!row.length) return;
      var used = {}, y = lines.length * ROW_H;
      row.sort(function (a, b) { return nodes[a].column - nodes[b].column || a - b; });
      row.forEach(function (i) {
        var p = nodes[i].column, k = used[p] || 0;
        used[p] = k + 1;
        nodes[i].x = start[p] + k * (NODE_W + GAP_X); nodes[i].y = y; nodes[i].placed = true;
      });
      lines.push({ row: nRows - 1 - j, first: true, nodes: row, y: y });
    });
    lines.columns = span.map(function (w, p) { return [start[p], w]; });
    return lines;
  }

  /* An edge's ends: from the source box's side that faces the target to the target's facing side. */
  function edgeEnds(s, t) {
    var up = t.y < s.y;
    return [s.x + NODE_W / 2, up ? s.y : s.y + NODE_H, t.x + NODE_W / 2, up ? t.y + NODE_H : t.y];
  }

  function init(root, data) {
    var nodes = data.nodes, edges = data.edges;
    var absSorted = edges.map(function (e) { return Math.abs(e[2]); }).sort(function (a, b) { return a - b; });
    var scale = 0;
    edges.forEach(function (e) {
      if (!nodes[e[0]].error && !nodes[e[1]].error) scale = Math.max(scale, Math.abs(e[2]));
    });
    if (scale === 0) scale = absSorted.length ? absSorted[absSorted.length - 1] : 1;
    var lines = [], perLine = 8;
    var state = {
      threshold: 0, showErrors: true, runsOn: data.runs.map(function () { return true; }),
      selected: -1, hoverNode: -1, hoverEdge: -1, matches: null,
      tx: 0, ty: 0, zoom: 1, nodeOn: [], edgeOn: [], pathNodes: null, pathEdges: null,
    };

    /* ---------------------------------------------------------------- DOM */
    root.textContent = "";
    var bar = el("div", "sc-bar");
    var search = el("input", "sc-search");
    search.type = "search";
    search.placeholder = "search id or context token";
    var slider = el("input", "sc-slider");
    slider.type = "range"; slider.min = 0; slider.max = SLIDER_STEPS; slider.value = 0;
    var thresholdText = el("span", "sc-threshold");
    var errorBox = el("input");
    errorBox.type = "checkbox"; errorBox.checked = true; errorBox.className = "sc-errors";
    var errorLabel = el("label", "sc-check");
    errorLabel.appendChild(errorBox);
    errorLabel.appendChild(document.createTextNode(" error nodes"));
    var fitButton = el("button", "sc-fit", "fit");
    var allButton = el("button", "sc-all", "all edges");
    var counts = el("span", "sc-counts");
    [search, el("span", "sc-label", "|effect| ≥"), slider, thresholdText, allButton, errorLabel, fitButton, counts]
      .forEach(function (e) { bar.appendChild(e); });

    var main = el("div", "sc-main");
    var stage = el("div", "sc-stage");
    var canvas = el("canvas", "sc-canvas");
    var tip = el("div", "sc-tip");
    stage.appendChild(canvas);
    stage.appendChild(tip);
    var side = el("div", "sc-side");
    main.appendChild(stage);
    main.appendChild(side);
    root.appendChild(bar);
    root.appendChild(main);
    var ctx = canvas.getContext("2d");

    function legendBox() {
      var legend = el("div", "sc-legend");
      data.legend.forEach(function (entry) {
        var row = el("div", "sc-legend-row");
        row.appendChild(el("b", null, entry[0]));
        row.appendChild(el("span", null, " " + entry[1]));
        legend.appendChild(row);
      });
      return legend;
    }

    function sideInfo() {
      side.textContent = "";
      data.caption.forEach(function (line, k) { side.appendChild(el("div", k ? "sc-summary" : "sc-caption", line)); });
      side.appendChild(legendBox());
      if (data.runs.length) {
        var runs = el("div", "sc-runs");
        runs.appendChild(el("div", "sc-heading", "runs merged in this graph"));
        data.runs.forEach(function (run, i) {
          var label = el("label", "sc-check sc-run");
          var box = el("input");
          box.type = "checkbox"; box.checked = state.runsOn[i];
          box.addEventListener("change", function () { state.runsOn[i] = box.checked; apply(); });
          label.appendChild(box);
          label.appendChild(document.createTextNode(" " + run));
          runs.appendChild(label);
        });
        side.appendChild(runs);
      }
      if (state.matches) {
        var list = el("div", "sc-results");
        list.appendChild(el("div", "sc-heading", state.matches.length + " nodes match"));
        state.matches.slice(0, 50).forEach(function (i) {
          var item = el("div", "sc-result", nodes[i].id);
          item.addEventListener("click", function () { select(i, true); });
          list.appendChild(item);
        });
        side.appendChild(list);
      }
    }

    function tokenRow(tokens, values, colourOf, maxAbs) {
      var row = el("div", "sc-tokens");
      tokens.forEach(function (token, k) {
        var strength = maxAbs > 0 ? Math.min(1, Math.abs(values[k]) / maxAbs) : 0;
        var span = el("span", "sc-token" + (strength > 0.6 ? " sc-dark" : ""), visible(token));
        span.style.background = rgba(colourOf(values[k]), strength);
        span.title = fmt(values[k]);
        row.appendChild(span);
      });
      return row;
    }

    // steer.py commands for the selected feature (viewer.py's `steer`: [label, text] pairs), each
    // with a copy button; the clipboard API where the page may use it, else a selected textarea.
    function steerBox(lines) {
      var box = el("div", "sc-steer");
      box.appendChild(el("div", "sc-heading", "test it with steer.py (add --config PATH for yours)"));
      lines.forEach(function (line) {
        var row = el("div", "sc-steer-row");
        var button = el("button", "sc-copy", "copy");
        button.title = "copy the " + line[0] + " command";
        button.addEventListener("click", function () { copyText(line[1], button); });
        row.appendChild(el("span", "sc-steer-label", line[0]));
        row.appendChild(el("pre", "sc-steer-code", line[1]));
        row.appendChild(button);
        box.appendChild(row);
      });
      return box;
    }

    function copyText(text, button) {
      var done = function () {
        button.textContent = "copied";
        setTimeout(function () { button.textContent = "copy"; }, 1500);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () { copyBySelection(text) && done(); });
      } else if (copyBySelection(text)) {
        done();
      }
    }

    function copyBySelection(text) {
      var area = el("textarea", "sc-copy-area");
      area.value = text;
      root.appendChild(area);
      area.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      root.removeChild(area);
      return ok;
    }

    function sideNode(i) {
      var n = nodes[i];
      side.textContent = "";
      var close = el("button", "sc-close", "× back");
      close.addEventListener("click", function () { select(-1, false); });
      side.appendChild(close);
      side.appendChild(el("div", "sc-node-id", n.id));
      side.appendChild(el("div", "sc-facts",
        [n.hook || "", "act " + fmt(n.activation), "attr " + fmt(n.attribution)].join("  ")));
      if (n.url) {
        var link = el("a", "sc-link", "Neuronpedia page");
        link.href = n.url; link.target = "_blank"; link.rel = "noopener noreferrer";
        side.appendChild(link);
      }
      if (n.explanation) side.appendChild(el("div", "sc-explanation", n.explanation));
      if (n.steer && n.steer.length) side.appendChild(steerBox(n.steer));
      var maxAct = 0;
      n.contexts.forEach(function (c) { c.activations.forEach(function (a) { maxAct = Math.max(maxAct, a); }); });
      var contexts = el("div", "sc-contexts");
      contexts.appendChild(el("div", "sc-heading", n.contexts.length ? "top contexts" : "no contexts stored"));
      n.contexts.forEach(function (c) {
        contexts.appendChild(tokenRow(c.tokens, c.activations, function () { return BLUE; }, maxAct));
      });
      side.appendChild(contexts);
      var logits = n.up.concat(n.down);
      if (logits.length) {
        var maxLogit = Math.max.apply(null, logits.map(function (p) { return Math.abs(p[1]); }));
        var sign = function (v) { return v >= 0 ? BLUE : RED; };
        [["+", n.up], ["−", n.down]].forEach(function (pair) {
          if (!pair[1].length) return;
          var row = tokenRow(pair[1].map(function (p) { return p[0]; }),
            pair[1].map(function (p) { return p[1]; }), sign, maxLogit);
          row.insertBefore(el("span", "sc-sign", pair[0]), row.firstChild);
          side.appendChild(row);
        });
      }
      var strongest = [];
      edges.forEach(function (e, k) { if (state.edgeOn[k] && (e[0] === i || e[1] === i)) strongest.push(k); });
      strongest.sort(function (a, b) { return Math.abs(edges[b][2]) - Math.abs(edges[a][2]); });
      var list = el("div", "sc-edges");
      list.appendChild(el("div", "sc-heading", strongest.length + " visible edges"));
      strongest.slice(0, 20).forEach(function (k) {
        var e = edges[k];
        list.appendChild(el("div", e[2] >= 0 ? "sc-up" : "sc-down",
          nodes[e[0]].id + " → " + nodes[e[1]].id + ": " + fmt(e[2])));
      });
      side.appendChild(list);
      side.appendChild(el("div", "sc-heading", "legend"));
      side.appendChild(legendBox());
    }

    /* ---------------------------------------------------------------- filters */
    function runOn(runs) {
      if (!runs) return true;
      for (var k = 0; k < runs.length; k++) if (state.runsOn[runs[k]] !== false) return true;
      return false;
    }

    function paths(start) {
      var pn = {}, pe = {};
      pn[start] = true;
      [[0, 1], [1, 0]].forEach(function (dir) {
        var frontier = [start], seen = {};
        seen[start] = true;
        while (frontier.length) {
          var next = [];
          var inFrontier = {};
          frontier.forEach(function (i) { inFrontier[i] = true; });
          edges.forEach(function (e, k) {
            if (!state.edgeOn[k] || !inFrontier[e[dir[1]]]) return;
            pe[k] = true;
            var other = e[dir[0]];
            pn[other] = true;
            if (!seen[other]) { seen[other] = true; next.push(other); }
          });
          frontier = next;
        }
      });
      return [pn, pe];
    }

    function apply() {
      var t0 = performance.now();
      var touched = new Uint8Array(nodes.length);
      var nodeAllowed = nodes.map(function (n) { return (state.showErrors || !n.error) && runOn(n.runs); });
      var visibleEdges = 0, visibleNodes = 0;
      state.edgeOn = edges.map(function (e) {
        var on = Math.abs(e[2]) >= state.threshold && nodeAllowed[e[0]] && nodeAllowed[e[1]] && runOn(e[3]);
        if (on) { touched[e[0]] = 1; touched[e[1]] = 1; visibleEdges++; }
        return on;
      });
      var pruning = state.threshold > 0;
      state.nodeOn = nodes.map(function (n, i) {
        var on = nodeAllowed[i] && (!pruning || touched[i] === 1);
        if (on) visibleNodes++;
        return on;
      });
      lines = data.tokens
        ? tokenLayout(nodes, data.rows.length, state.nodeOn, data.tokens.length)
        : layout(nodes, edges, data.rows.length, state.nodeOn, state.edgeOn, perLine);
      if (state.selected >= 0 && !state.nodeOn[state.selected]) state.selected = -1;
      var p = state.selected >= 0 ? paths(state.selected) : null;
      state.pathNodes = p && p[0];
      state.pathEdges = p && p[1];
      thresholdText.textContent = fmt(state.threshold);
      counts.textContent = visibleNodes + " / " + nodes.length + " nodes, " +
        visibleEdges + " / " + edges.length + " edges";
      root.dataset.visibleNodes = visibleNodes;
      root.dataset.visibleEdges = visibleEdges;
      root.dataset.threshold = String(state.threshold);
      root.dataset.pathNodes = p ? Object.keys(p[0]).length : "";
      if (state.selected >= 0) sideNode(state.selected); else sideInfo();
      draw();
      root.dataset.applyMs = (performance.now() - t0).toFixed(2);
    }

    /* ---------------------------------------------------------------- drawing */
    function resize() {
      var dpr = window.devicePixelRatio || 1;
      canvas.width = Math.max(1, stage.clientWidth * dpr);
      canvas.height = Math.max(1, stage.clientHeight * dpr);
      canvas.style.width = stage.clientWidth + "px";
      canvas.style.height = stage.clientHeight + "px";
    }

    /* The placed nodes' extent, with room for the row labels on the left. */
    function extent() {
      var xs = [], ys = [];
      nodes.forEach(function (n, i) { if (state.nodeOn[i] && n.placed) { xs.push(n.x); ys.push(n.y); } });
      if (!xs.length) return null;
      if (lines.columns) {
        var last = lines.columns[lines.columns.length - 1];
        return [-LABEL_W, Math.min.apply(null, ys) - 20, last[0] + last[1] + 10, lines.length * ROW_H];
      }
      return [Math.min.apply(null, xs) - LABEL_W, Math.min.apply(null, ys) - 20,
        Math.max.apply(null, xs) + NODE_W + 10, Math.max.apply(null, ys) + NODE_H + 20];
    }

    function fit(maxZoom) {
      var box = extent();
      if (!box) return;
      var w = stage.clientWidth || 800, h = stage.clientHeight || 600;
      state.zoom = Math.min(w / (box[2] - box[0]), h / (box[3] - box[1]), maxZoom);
      state.tx = (w - (box[2] - box[0]) * state.zoom) / 2 - box[0] * state.zoom;
      state.ty = (h - (box[3] - box[1]) * state.zoom) / 2 - box[1] * state.zoom;
    }

    /* The first view: the whole graph if it fits at a legible zoom, else its top at that zoom (on a token
     * axis, its top right: the last token, whose next token the graph explains). */
    function firstView() {
      var box = extent();
      if (!box) return;
      var w = stage.clientWidth || 800, h = stage.clientHeight || 600;
      var zoom = Math.min(w / (box[2] - box[0]), h / (box[3] - box[1]), MAX_ZOOM);
      if (zoom >= LEGIBLE_ZOOM) { fit(MAX_ZOOM); return; }
      state.zoom = LEGIBLE_ZOOM;
      var spare = w - (box[2] - box[0]) * state.zoom;
      state.tx = (lines.columns ? Math.min(0, spare) : Math.max(0, spare / 2)) - box[0] * state.zoom;
      state.ty = -box[1] * state.zoom;
    }

    function drawEdges(dimmed) {
      var buckets = {};
      edges.forEach(function (e, k) {
        if (!state.edgeOn[k]) return;
        var onPath = state.pathEdges ? state.pathEdges[k] === true : true;
        if (onPath === dimmed) return;
        var level = Math.max(1, Math.min(10, Math.round(10 * Math.abs(e[2]) / scale)));
        var key = (e[2] >= 0 ? "b" : "r") + level;
        (buckets[key] = buckets[key] || []).push(e);
      });
      Object.keys(buckets).forEach(function (key) {
        var level = Number(key.slice(1)) / 10;
        ctx.strokeStyle = rgba(key[0] === "b" ? BLUE : RED, (dimmed ? 0.12 : 1) * Math.max(0.15, level));
        ctx.lineWidth = Math.max(0.5 + 2.5 * level, 1 / state.zoom);
        ctx.beginPath();
        buckets[key].forEach(function (e) {
          var end = edgeEnds(nodes[e[0]], nodes[e[1]]);
          ctx.moveTo(end[0], end[1]);
          ctx.lineTo(end[2], end[3]);
        });
        ctx.stroke();
      });
    }

    function drawNode(n, i) {
      var dim = state.pathNodes && !state.pathNodes[i];
      var match = state.matches && state.matchSet[i];
      ctx.globalAlpha = dim ? 0.25 : 1;
      ctx.fillStyle = i === state.selected ? "#fff3c4" : match ? "#e6f0fa" : "#ffffff";
      ctx.fillRect(n.x, n.y, NODE_W, NODE_H);
      ctx.setLineDash(n.error ? [3, 3] : []);
      ctx.lineWidth = (i === state.selected || i === state.hoverNode || match ? 2.5 : 1) / Math.min(1, state.zoom);
      ctx.strokeStyle = match ? "#2166ac" : "#333333";
      ctx.strokeRect(n.x, n.y, NODE_W, NODE_H);
      if (state.zoom > 0.3) {
        ctx.fillStyle = "#111111";
        ctx.font = "bold 12px Helvetica, Arial, sans-serif";
        ctx.fillText(n.id, n.x + 5, n.y + 14, NODE_W - 10);
        ctx.font = "10px Helvetica, Arial, sans-serif";
        var facts = [n.activation === null ? "" : "act " + fmt(n.activation),
          n.attribution === null ? "" : "attr " + fmt(n.attribution)];
        ctx.fillText(facts.join("  ").trim(), n.x + 5, n.y + 28, NODE_W - 10);
      }
      ctx.globalAlpha = 1;
    }

    /* The token axis under the lowest row: each position's token (and index) centred on its column. */
    function drawTokens() {
      var y = lines.length * ROW_H - (ROW_H - NODE_H) / 2;
      ctx.fillStyle = "#111111";
      ctx.textAlign = "center";
      lines.columns.forEach(function (column, p) {
        var centre = column[0] + column[1] / 2;
        ctx.font = "bold 13px Helvetica, Arial, sans-serif";
        ctx.fillText(visible(data.tokens[p]), centre, y, column[1]);
        ctx.font = "10px Helvetica, Arial, sans-serif";
        ctx.fillText("@" + p, centre, y + 14);
        ctx.strokeStyle = "#dddddd";
        ctx.lineWidth = 1 / state.zoom;
        ctx.beginPath();
        ctx.moveTo(column[0] - GAP_X / 2, -20);
        ctx.lineTo(column[0] - GAP_X / 2, y + 18);
        ctx.stroke();
      });
      ctx.textAlign = "left";
    }

    function draw() {
      var dpr = window.devicePixelRatio || 1;
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      ctx.setTransform(dpr * state.zoom, 0, 0, dpr * state.zoom, dpr * state.tx, dpr * state.ty);
      if (state.pathEdges) drawEdges(true);
      drawEdges(false);
      if (state.hoverEdge >= 0) {
        var e = edges[state.hoverEdge], end = edgeEnds(nodes[e[0]], nodes[e[1]]);
        ctx.strokeStyle = "#ffb000";
        ctx.lineWidth = 4 / state.zoom;
        ctx.beginPath();
        ctx.moveTo(end[0], end[1]);
        ctx.lineTo(end[2], end[3]);
        ctx.stroke();
      }
      ctx.fillStyle = "#666666";
      ctx.font = "11px Helvetica, Arial, sans-serif";
      var shownLeft = -state.tx / state.zoom + 4;  /* a token axis' row labels stay in view, above their row */
      lines.forEach(function (line) {
        if (!line.first) return;
        if (lines.columns) ctx.fillText(data.rows[line.row], Math.max(-86, shownLeft), line.y - 6);
        else ctx.fillText(data.rows[line.row], nodes[line.nodes[0]].x - 86, line.y + 20, 80);
      });
      nodes.forEach(function (n, i) { if (state.nodeOn[i] && n.placed) drawNode(n, i); });
      if (lines.columns) drawTokens();
      root.dataset.zoom = state.zoom.toFixed(3);
      ctx.setLineDash([]);
    }

    var pending = false;
    function redrawSoon() {
      if (pending) return;
      pending = true;
      requestAnimationFrame(function () { pending = false; draw(); });
    }

    /* ---------------------------------------------------------------- picking */
    function world(evt) {
      var box = canvas.getBoundingClientRect();
      return [(evt.clientX - box.left - state.tx) / state.zoom, (evt.clientY - box.top - state.ty) / state.zoom];
    }

    function nodeAt(p) {
      var r = Math.floor(p[1] / ROW_H);
      if (r < 0 || r >= lines.length || p[1] - r * ROW_H > NODE_H) return -1;
      var line = lines[r].nodes;
      for (var k = 0; k < line.length; k++) {
        var n = nodes[line[k]];
        if (p[0] >= n.x && p[0] <= n.x + NODE_W) return line[k];
      }
      return -1;
    }

    function edgeAt(p) {
      var best = -1, bestD = 5 / state.zoom;
      edges.forEach(function (e, k) {
        if (!state.edgeOn[k]) return;
        var end = edgeEnds(nodes[e[0]], nodes[e[1]]);
        var ax = end[0], ay = end[1], dx = end[2] - ax, dy = end[3] - ay;
        var len2 = dx * dx + dy * dy || 1;
        var u = Math.max(0, Math.min(1, ((p[0] - ax) * dx + (p[1] - ay) * dy) / len2));
        var d = Math.hypot(p[0] - ax - u * dx, p[1] - ay - u * dy);
        if (d < bestD) { bestD = d; best = k; }
      });
      return best;
    }

    function showTip(evt, lines) {
      var box = stage.getBoundingClientRect();
      tip.textContent = lines.join("\n");
      tip.style.display = lines.length ? "block" : "none";
      tip.style.left = (evt.clientX - box.left + 14) + "px";
      tip.style.top = (evt.clientY - box.top + 14) + "px";
    }

    function hover(evt) {
      var p = world(evt), i = nodeAt(p), k = i < 0 ? edgeAt(p) : -1;
      if (i !== state.hoverNode || k !== state.hoverEdge) {
        state.hoverNode = i; state.hoverEdge = k;
        redrawSoon();
      }
      if (i >= 0) {
        var n = nodes[i];
        showTip(evt, [n.id, "hook " + (n.hook || "n/a"), "activation " + fmt(n.activation),
          "attribution " + fmt(n.attribution)]);
      } else if (k >= 0) {
        var e = edges[k];
        showTip(evt, [nodes[e[0]].id + " → " + nodes[e[1]].id, "effect " + fmt(e[2])]);
      } else {
        showTip(evt, []);
      }
    }

    function centreOn(i) {
      var n = nodes[i];
      state.zoom = Math.max(state.zoom, 0.8);
      state.tx = stage.clientWidth / 2 - (n.x + NODE_W / 2) * state.zoom;
      state.ty = stage.clientHeight / 2 - (n.y + NODE_H / 2) * state.zoom;
    }

    function select(i, centre) {
      state.selected = i;
      root.dataset.selected = i >= 0 ? nodes[i].id : "";
      if (i >= 0 && centre) centreOn(i);
      apply();
    }

    function runSearch() {
      var q = search.value.trim().toLowerCase();
      if (!q) {
        state.matches = null; state.matchSet = null;
      } else {
        state.matches = [];
        state.matchSet = {};
        nodes.forEach(function (n, i) {
          var hit = n.id.toLowerCase().indexOf(q) >= 0 || n.contexts.some(function (c) {
            return c.tokens.some(function (t) { return String(t).toLowerCase().indexOf(q) >= 0; });
          });
          if (hit) { state.matches.push(i); state.matchSet[i] = true; }
        });
      }
      root.dataset.searchMatches = state.matches ? state.matches.length : "";
      if (state.selected < 0) sideInfo();
      draw();
    }

    /* ---------------------------------------------------------------- events */
    var drag = null;
    canvas.addEventListener("mousedown", function (evt) {
      drag = { x: evt.clientX, y: evt.clientY, tx: state.tx, ty: state.ty, moved: false };
    });
    window.addEventListener("mousemove", function (evt) {
      if (!drag) return;
      var dx = evt.clientX - drag.x, dy = evt.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      state.tx = drag.tx + dx; state.ty = drag.ty + dy;
      redrawSoon();
    });
    window.addEventListener("mouseup", function (evt) {
      if (drag && !drag.moved && evt.target === canvas) select(nodeAt(world(evt)), false);
      drag = null;
    });
    canvas.addEventListener("mousemove", function (evt) { if (!drag) hover(evt); });
    canvas.addEventListener("mouseleave", function () { showTip({ clientX: 0, clientY: 0 }, []); });
    canvas.addEventListener("wheel", function (evt) {
      evt.preventDefault();
      var box = canvas.getBoundingClientRect(), mx = evt.clientX - box.left, my = evt.clientY - box.top;
      var factor = Math.exp(-evt.deltaY * 0.0015);
      state.tx = mx - (mx - state.tx) * factor; state.ty = my - (my - state.ty) * factor;
      state.zoom *= factor;
      redrawSoon();
    }, { passive: false });
    slider.addEventListener("input", function () {
      var k = Number(slider.value);
      state.threshold = k === 0 || !absSorted.length ? 0 :
        absSorted[Math.min(absSorted.length - 1, Math.floor(k / SLIDER_STEPS * absSorted.length))];
      apply();
    });
    errorBox.addEventListener("change", function () { state.showErrors = errorBox.checked; apply(); });
    fitButton.addEventListener("click", function () { fit(2); draw(); });
    allButton.addEventListener("click", function () {
      slider.value = 0; state.threshold = 0; apply(); fit(2); draw();
    });
    search.addEventListener("input", runSearch);
    search.addEventListener("keydown", function (evt) {
      if (evt.key === "Enter" && state.matches && state.matches.length) select(state.matches[0], true);
    });
    if (window.ResizeObserver) new ResizeObserver(function () { resize(); draw(); }).observe(stage);

    resize();
    perLine = Math.max(4, Math.floor(((stage.clientWidth || 800) / LEGIBLE_ZOOM - LABEL_W) / (NODE_W + GAP_X)));
    if (absSorted.length > INITIAL_EDGES) {
      var first = absSorted.length - INITIAL_EDGES;
      state.threshold = absSorted[first];
      slider.value = Math.ceil(first / absSorted.length * SLIDER_STEPS);
    }
    apply();
    firstView();
    draw();
    root.scViewer = {
      screenPoint: function (id) {
        var i = nodes.findIndex(function (n) { return n.id === id; });
        var box = canvas.getBoundingClientRect(), n = nodes[i];
        return [box.left + state.tx + (n.x + NODE_W / 2) * state.zoom,
          box.top + state.ty + (n.y + NODE_H / 2) * state.zoom];
      },
      screenBoxes: function () {
        var box = canvas.getBoundingClientRect(), out = [];
        nodes.forEach(function (n, i) {
          if (!state.nodeOn[i] || !n.placed) return;
          out.push([n.id, box.left + state.tx + n.x * state.zoom, box.top + state.ty + n.y * state.zoom,
            NODE_W * state.zoom, NODE_H * state.zoom]);
        });
        return out;
      },
      centreOn: function (id) {
        centreOn(nodes.findIndex(function (n) { return n.id === id; }));
        draw();
      },
    };
  }

  window.scGraphViewer = { init: init };
})();
