/* The side panel: caption, legend, runs and search results; or the selected node's facts, link, steer
 * commands, contexts, logit cells and edges. Clicks go to actions.select(i, centre), toggleRun(i, on). */
class SidePanel {
  constructor(side, root, data, state, actions) {
    Object.assign(this, { side, root, data, state, actions });
  }

  legend() {
    const legend = el("div", "sc-legend");
    for (const [term, meaning] of this.data.legend) {
      const row = el("div", "sc-legend-row");
      row.append(el("b", null, term), el("span", null, ` ${meaning}`));
      legend.appendChild(row);
    }
    return legend;
  }

  showInfo() {
    const { side, data, state } = this;
    side.textContent = "";
    data.caption.forEach((line, k) => side.appendChild(el("div", k ? "sc-summary" : "sc-caption", line)));
    side.appendChild(this.legend());
    if (data.runs.length) {
      const runs = el("div", "sc-runs");
      runs.appendChild(el("div", "sc-heading", "runs merged in this graph"));
      data.runs.forEach((run, i) => {
        const label = el("label", "sc-check sc-run"), box = el("input");
        box.type = "checkbox"; box.checked = state.runsOn[i];
        box.addEventListener("change", () => this.actions.toggleRun(i, box.checked));
        label.append(box, ` ${run}`);
        runs.appendChild(label);
      });
      side.appendChild(runs);
    }
    if (state.matches) {
      const list = el("div", "sc-results");
      list.appendChild(el("div", "sc-heading", `${state.matches.length} nodes match`));
      for (const i of state.matches.slice(0, 50)) {
        const item = el("div", "sc-result", data.nodes[i].id);
        item.addEventListener("click", () => this.actions.select(i, true));
        list.appendChild(item);
      }
      side.appendChild(list);
    }
  }

  showNode(i) {
    const { side } = this, n = this.data.nodes[i];
    side.textContent = "";
    const close = el("button", "sc-close", "× back");
    close.addEventListener("click", () => this.actions.select(-1, false));
    side.append(close, el("div", "sc-node-id", n.id),
      el("div", "sc-facts", [n.hook || "", `act ${fmt(n.activation)}`, `attr ${fmt(n.attribution)}`].join("  ")));
    if (n.url) {
      const link = el("a", "sc-link", "Neuronpedia page");
      link.href = n.url; link.target = "_blank"; link.rel = "noopener noreferrer";
      side.appendChild(link);
    }
    if (n.explanation) side.appendChild(el("div", "sc-explanation", n.explanation));
    if (n.steer?.length) side.appendChild(steerBox(n.steer, this.root));
    side.appendChild(contextsBox(n.contexts));
    for (const row of logitRows(n.up, n.down)) side.appendChild(row);
    side.append(this.edgeList(i), el("div", "sc-heading", "legend"), this.legend());
  }

  /* The node's 20 strongest shown edges. */
  edgeList(i) {
    const { edges, nodes } = this.data, edgeOn = this.state.edgeOn, strongest = [];
    edges.forEach((e, k) => { if (edgeOn[k] && (e[0] === i || e[1] === i)) strongest.push(k); });
    strongest.sort((a, b) => Math.abs(edges[b][2]) - Math.abs(edges[a][2]));
    const list = el("div", "sc-edges");
    list.appendChild(el("div", "sc-heading", `${strongest.length} visible edges`));
    for (const k of strongest.slice(0, 20)) {
      const [s, t, effect] = edges[k];
      const text = `${nodes[s].id} → ${nodes[t].id}: ${fmt(effect)}`;
      list.appendChild(el("div", effect >= 0 ? "sc-up" : "sc-down", text));
    }
    return list;
  }
}

/* Tokens shaded by |value| relative to maxAbs, in the colour colourOf(value); the value on hover. */
function tokenRow(tokens, values, colourOf, maxAbs) {
  const row = el("div", "sc-tokens");
  tokens.forEach((token, k) => {
    const strength = maxAbs > 0 ? Math.min(1, Math.abs(values[k]) / maxAbs) : 0;
    const span = el("span", `sc-token${strength > 0.6 ? " sc-dark" : ""}`, visible(token));
    span.style.background = rgba(colourOf(values[k]), strength);
    span.title = fmt(values[k]);
    row.appendChild(span);
  });
  return row;
}

/* The top-activating contexts, each token shaded by its activation relative to the largest shown. */
function contextsBox(contexts) {
  let maxAct = 0;
  for (const c of contexts) for (const a of c.activations) maxAct = Math.max(maxAct, a);
  const box = el("div", "sc-contexts");
  box.appendChild(el("div", "sc-heading", contexts.length ? "top contexts" : "no contexts stored"));
  for (const c of contexts) box.appendChild(tokenRow(c.tokens, c.activations, () => BLUE, maxAct));
  return box;
}

/* The + and − logit cells: [token, value] pairs, blue for a raised token and red for a lowered one. */
function logitRows(up, down) {
  const logits = up.concat(down);
  if (!logits.length) return [];
  const maxLogit = Math.max(...logits.map((p) => Math.abs(p[1])));
  const sign = (v) => (v >= 0 ? BLUE : RED);
  return [["+", up], ["−", down]].filter(([, cells]) => cells.length).map(([mark, cells]) => {
    const row = tokenRow(cells.map((p) => p[0]), cells.map((p) => p[1]), sign, maxLogit);
    row.insertBefore(el("span", "sc-sign", mark), row.firstChild);
    return row;
  });
}
