/* Where the shown nodes go (n.x, n.y, n.placed) and what lies under a point. A layout is a list of
 * lines {row, first, nodes, y}, ROW_H apart; on a token axis with lines.columns ([left, width]). */

/* The shown nodes in lines: each row (site and layer) in forward order, wrapped after `perLine`
 * boxes. A row that fits one line is ordered by the mean x of its upstream neighbours (fewer
 * crossings); a wrapped row puts its strongest nodes (summed |effect| of shown edges) first. */
function forwardLayout(nodes, edges, nRows, nodeOn, edgeOn, perLine) {
  const byRow = rowsOf(nodes, nRows, nodeOn), up = nodes.map(() => []);
  const strength = new Float64Array(nodes.length), lines = [];
  edges.forEach((e, k) => {
    if (!edgeOn[k]) return;
    up[e[1]].push(e[0]);
    strength[e[0]] += Math.abs(e[2]); strength[e[1]] += Math.abs(e[2]);
  });
  byRow.forEach((row, r) => {
    if (!row.length) return;
    const key = row.map((i, k) => {
      if (row.length > perLine) return -strength[i];
      const xs = up[i].filter((j) => nodes[j].placed);
      if (!xs.length) return k * (NODE_W + GAP_X);
      return xs.reduce((s, j) => s + nodes[j].x, 0) / xs.length;
    });
    const order = row.map((i, k) => k).sort((a, b) => key[a] - key[b] || a - b);
    for (let start = 0; start < order.length; start += perLine) {
      const chunk = order.slice(start, start + perLine).map((k) => row[k]);
      const width = chunk.length * (NODE_W + GAP_X) - GAP_X, y = lines.length * ROW_H;
      chunk.forEach((i, pos) => place(nodes[i], pos * (NODE_W + GAP_X) - width / 2, y));
      lines.push({ row: r, first: start === 0, nodes: chunk, y });
    }
  });
  return lines;
}

/* Positioned nodes: rows in forward order from the bottom up, each token a column as wide as its
 * fullest row. */
function tokenLayout(nodes, nRows, nodeOn, nTokens) {
  const byRow = rowsOf(nodes, nRows, nodeOn), width = new Array(nTokens).fill(0), lines = [], start = [];
  for (const row of byRow) {
    const count = {};
    for (const i of row) {
      const p = nodes[i].column;
      count[p] = (count[p] || 0) + 1;
      width[p] = Math.max(width[p], count[p]);
    }
  }
  let x = 0;
  const span = width.map((w) => (w ? w * (NODE_W + GAP_X) - GAP_X : EMPTY_W));
  span.forEach((w, p) => { start[p] = x; x += w + 2 * GAP_X; });
  byRow.slice().reverse().forEach((row, j) => {
    if (!row.length) return;
    const used = {}, y = lines.length * ROW_H;
    row.sort((a, b) => nodes[a].column - nodes[b].column || a - b);
    for (const i of row) {
      const p = nodes[i].column, k = used[p] || 0;
      used[p] = k + 1;
      place(nodes[i], start[p] + k * (NODE_W + GAP_X), y);
    }
    lines.push({ row: nRows - 1 - j, first: true, nodes: row, y });
  });
  lines.columns = span.map((w, p) => [start[p], w]);
  return lines;
}

/* The shown nodes' indices by row; every node unplaced until a layout places it. */
function rowsOf(nodes, nRows, nodeOn) {
  const byRow = Array.from({ length: nRows }, () => []);
  nodes.forEach((n, i) => { n.placed = false; if (nodeOn[i]) byRow[n.row].push(i); });
  return byRow;
}

function place(node, x, y) {
  node.x = x; node.y = y; node.placed = true;
}

/* An edge's ends: from the source box's side that faces the target to the target's facing side. */
function edgeEnds(s, t) {
  const up = t.y < s.y;
  return [s.x + NODE_W / 2, up ? s.y : s.y + NODE_H, t.x + NODE_W / 2, up ? t.y + NODE_H : t.y];
}

/* The placed nodes' extent [left, top, right, bottom], with room for the row labels on the left. */
function extent(nodes, nodeOn, lines) {
  const xs = [], ys = [];
  nodes.forEach((n, i) => { if (nodeOn[i] && n.placed) { xs.push(n.x); ys.push(n.y); } });
  if (!xs.length) return null;
  if (lines.columns) {
    const last = lines.columns[lines.columns.length - 1];
    return [-LABEL_W, Math.min(...ys) - 20, last[0] + last[1] + 10, lines.length * ROW_H];
  }
  return [Math.min(...xs) - LABEL_W, Math.min(...ys) - 20,
    Math.max(...xs) + NODE_W + 10, Math.max(...ys) + NODE_H + 20];
}

/* The node whose box holds the world point p, or -1. */
function nodeAt(nodes, lines, p) {
  const r = Math.floor(p[1] / ROW_H);
  if (r < 0 || r >= lines.length || p[1] - r * ROW_H > NODE_H) return -1;
  return lines[r].nodes.find((i) => p[0] >= nodes[i].x && p[0] <= nodes[i].x + NODE_W) ?? -1;
}

/* The shown edge nearest the world point p, if nearer than maxDistance; else -1. */
function edgeAt(nodes, edges, edgeOn, p, maxDistance) {
  let best = -1, bestD = maxDistance;
  edges.forEach((e, k) => {
    if (!edgeOn[k]) return;
    const [ax, ay, bx, by] = edgeEnds(nodes[e[0]], nodes[e[1]]);
    const dx = bx - ax, dy = by - ay, len2 = dx * dx + dy * dy || 1;
    const u = Math.max(0, Math.min(1, ((p[0] - ax) * dx + (p[1] - ay) * dy) / len2));
    const d = Math.hypot(p[0] - ax - u * dx, p[1] - ay - u * dy);
    if (d < bestD) { bestD = d; best = k; }
  });
  return best;
}
