/* The canvas: edges (bucketed by colour and width), boxes, row labels, token axis. */
class Painter {
  constructor(canvas, data, state, camera) {
    const ctx = canvas.getContext("2d"), scale = edgeScale(data.nodes, data.edges, state.absSorted);
    Object.assign(this, { canvas, ctx, data, state, camera, scale });
  }

  resize(stage) {
    const dpr = window.devicePixelRatio || 1;
    this.canvas.width = Math.max(1, stage.clientWidth * dpr);
    this.canvas.height = Math.max(1, stage.clientHeight * dpr);
    this.canvas.style.width = `${stage.clientWidth}px`;
    this.canvas.style.height = `${stage.clientHeight}px`;
  }

  draw(lines) {
    const { ctx, camera, state, data } = this, nodes = data.nodes;
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.setTransform(dpr * camera.zoom, 0, 0, dpr * camera.zoom, dpr * camera.tx, dpr * camera.ty);
    if (state.pathEdges) this.drawEdges(true);
    this.drawEdges(false);
    if (state.hoverEdge >= 0) this.drawHoverEdge(data.edges[state.hoverEdge]);
    this.drawRowLabels(lines);
    nodes.forEach((n, i) => { if (state.nodeOn[i] && n.placed) this.drawNode(n, i); });
    if (lines.columns) this.drawTokens(lines);
    ctx.setLineDash([]);
  }

  /* The shown edges on (or, dimmed, off) the selected node's paths, one stroke per colour and level. */
  drawEdges(dimmed) {
    const { ctx, state } = this, nodes = this.data.nodes, buckets = new Map();
    this.data.edges.forEach((e, k) => {
      if (!state.edgeOn[k]) return;
      const onPath = state.pathEdges ? state.pathEdges[k] === 1 : true;
      if (onPath === dimmed) return;
      const level = Math.max(1, Math.min(10, Math.round(10 * Math.abs(e[2]) / this.scale)));
      const key = (e[2] >= 0 ? "b" : "r") + level;
      if (!buckets.has(key)) buckets.set(key, []);
      buckets.get(key).push(e);
    });
    for (const [key, bucket] of buckets) {
      const level = Number(key.slice(1)) / 10;
      ctx.strokeStyle = rgba(key[0] === "b" ? BLUE : RED, (dimmed ? 0.12 : 1) * Math.max(0.15, level));
      ctx.lineWidth = Math.max(0.5 + 2.5 * level, 1 / this.camera.zoom);
      ctx.beginPath();
      for (const e of bucket) {
        const end = edgeEnds(nodes[e[0]], nodes[e[1]]);
        ctx.moveTo(end[0], end[1]);
        ctx.lineTo(end[2], end[3]);
      }
      ctx.stroke();
    }
  }

  drawHoverEdge(e) {
    const ctx = this.ctx, nodes = this.data.nodes, end = edgeEnds(nodes[e[0]], nodes[e[1]]);
    ctx.strokeStyle = "#ffb000";
    ctx.lineWidth = 4 / this.camera.zoom;
    ctx.beginPath();
    ctx.moveTo(end[0], end[1]);
    ctx.lineTo(end[2], end[3]);
    ctx.stroke();
  }

  /* Each row's label left of its first line; on a token axis above the row, kept in view. */
  drawRowLabels(lines) {
    const { ctx, camera } = this, { rows, nodes } = this.data;
    ctx.fillStyle = "#666666";
    ctx.font = "11px Helvetica, Arial, sans-serif";
    const shownLeft = -camera.tx / camera.zoom + 4;
    for (const line of lines) {
      if (!line.first) continue;
      if (lines.columns) ctx.fillText(rows[line.row], Math.max(-86, shownLeft), line.y - 6);
      else ctx.fillText(rows[line.row], nodes[line.nodes[0]].x - 86, line.y + 20, 80);
    }
  }

  drawNode(n, i) {
    const { ctx, state } = this, zoom = this.camera.zoom;
    const dim = state.pathNodes && !state.pathNodes[i];
    const match = state.matches && state.matchSet.has(i);
    ctx.globalAlpha = dim ? 0.25 : 1;
    ctx.fillStyle = i === state.selected ? "#fff3c4" : match ? "#e6f0fa" : "#ffffff";
    ctx.fillRect(n.x, n.y, NODE_W, NODE_H);
    ctx.setLineDash(n.error ? [3, 3] : []);
    ctx.lineWidth = (i === state.selected || i === state.hoverNode || match ? 2.5 : 1) / Math.min(1, zoom);
    ctx.strokeStyle = match ? "#2166ac" : "#333333";
    ctx.strokeRect(n.x, n.y, NODE_W, NODE_H);
    if (zoom > 0.3) {
      ctx.fillStyle = "#111111";
      ctx.font = "bold 12px Helvetica, Arial, sans-serif";
      ctx.fillText(n.id, n.x + 5, n.y + 14, NODE_W - 10);
      ctx.font = "10px Helvetica, Arial, sans-serif";
      const facts = [n.activation === null ? "" : `act ${fmt(n.activation)}`,
        n.attribution === null ? "" : `attr ${fmt(n.attribution)}`];
      ctx.fillText(facts.join("  ").trim(), n.x + 5, n.y + 28, NODE_W - 10);
    }
    ctx.globalAlpha = 1;
  }

  /* The token axis under the lowest row: each position's token (and index) centred on its column. */
  drawTokens(lines) {
    const ctx = this.ctx, y = lines.length * ROW_H - (ROW_H - NODE_H) / 2;
    ctx.fillStyle = "#111111";
    ctx.textAlign = "center";
    lines.columns.forEach(([left, width], p) => {
      const centre = left + width / 2;
      ctx.font = "bold 13px Helvetica, Arial, sans-serif";
      ctx.fillText(visible(this.data.tokens[p]), centre, y, width);
      ctx.font = "10px Helvetica, Arial, sans-serif";
      ctx.fillText(`@${p}`, centre, y + 14);
      ctx.strokeStyle = "#dddddd";
      ctx.lineWidth = 1 / this.camera.zoom;
      ctx.beginPath();
      ctx.moveTo(left - GAP_X / 2, -20);
      ctx.lineTo(left - GAP_X / 2, y + 18);
      ctx.stroke();
    });
    ctx.textAlign = "left";
  }
}

/* The |effect| drawn at full width and colour: the largest between feature nodes (error nodes left
 * out), else the largest of all, else 1. */
function edgeScale(nodes, edges, absSorted) {
  let scale = 0;
  for (const e of edges) {
    if (!nodes[e[0]].error && !nodes[e[1]].error) scale = Math.max(scale, Math.abs(e[2]));
  }
  return scale || (absSorted.length ? absSorted[absSorted.length - 1] : 1);
}
