/* What the page shows, without the DOM: filters (|effect|, error nodes, runs), the edges and nodes
 * that pass them, the selection and the paths through it, the hovered box or edge, search matches. */
class ViewState {
  constructor(data) {
    const { nodes, edges, runs } = data;
    Object.assign(this, {
      nodes, edges, absSorted: edges.map((e) => Math.abs(e[2])).sort((a, b) => a - b),
      threshold: 0, showErrors: true, runsOn: runs.map(() => true), selected: -1, hoverNode: -1, hoverEdge: -1,
      matches: null, matchSet: null,  /* node indices (array, Set), or null with no search */
      nodeOn: [], edgeOn: [], pathNodes: null, pathEdges: null,  /* 1 on a path through the selected node */
    });
  }

  /* Above INITIAL_EDGES edges, the threshold that shows the strongest INITIAL_EDGES; the slider step
   * for it, or null for a graph small enough to show whole. */
  openingStep() {
    const n = this.absSorted.length;
    if (n <= INITIAL_EDGES) return null;
    this.threshold = this.absSorted[n - INITIAL_EDGES];
    return Math.ceil((n - INITIAL_EDGES) / n * SLIDER_STEPS);
  }

  /* The slider's step k of SLIDER_STEPS sets the threshold at that quantile of |effect|. */
  setStep(k) {
    const sorted = this.absSorted;
    this.threshold = k === 0 || !sorted.length ? 0 :
      sorted[Math.min(sorted.length - 1, Math.floor(k / SLIDER_STEPS * sorted.length))];
  }

  runOn(runs) {
    return !runs || runs.some((r) => this.runsOn[r] !== false);
  }

  /* Sets edgeOn and nodeOn from the filters; above a zero threshold a node needs a shown edge. */
  filter() {
    const touched = new Uint8Array(this.nodes.length);
    const allowed = this.nodes.map((n) => (this.showErrors || !n.error) && this.runOn(n.runs));
    let visibleEdges = 0;
    this.edgeOn = this.edges.map((e) => {
      const on = Math.abs(e[2]) >= this.threshold && allowed[e[0]] && allowed[e[1]] && this.runOn(e[3]);
      if (on) { touched[e[0]] = 1; touched[e[1]] = 1; visibleEdges++; }
      return on;
    });
    const pruning = this.threshold > 0;
    this.nodeOn = this.nodes.map((n, i) => allowed[i] && (!pruning || touched[i] === 1));
    return { visibleNodes: this.nodeOn.filter(Boolean).length, visibleEdges };
  }

  /* Drops a selection the filters hide; the shown paths up and down from the selected node. */
  trace() {
    if (this.selected >= 0 && !this.nodeOn[this.selected]) this.selected = -1;
    [this.pathNodes, this.pathEdges] = this.selected >= 0 ? this.paths(this.selected) : [null, null];
  }

  /* Flags (Uint8Array) of the nodes and edges on a shown path down from, or up to, node `start`. */
  paths(start) {
    const { nodes, edges, edgeOn } = this;
    const pathNodes = new Uint8Array(nodes.length), pathEdges = new Uint8Array(edges.length);
    pathNodes[start] = 1;
    for (const [far, near] of [[0, 1], [1, 0]]) {
      const seen = new Uint8Array(nodes.length);
      let frontier = new Uint8Array(nodes.length), found = 1;
      seen[start] = 1; frontier[start] = 1;
      while (found) {
        const next = new Uint8Array(nodes.length);
        found = 0;
        edges.forEach((e, k) => {
          if (!edgeOn[k] || !frontier[e[near]]) return;
          pathEdges[k] = 1;
          const other = e[far];
          pathNodes[other] = 1;
          if (!seen[other]) { seen[other] = 1; next[other] = 1; found++; }
        });
        frontier = next;
      }
    }
    return [pathNodes, pathEdges];
  }

  /* The nodes whose id or a context token contains the query (case-insensitive); none for "". */
  search(query) {
    const q = query.trim().toLowerCase();
    if (!q) {
      this.matches = null; this.matchSet = null;
      return;
    }
    const hit = (n) => n.id.toLowerCase().includes(q) ||
      n.contexts.some((c) => c.tokens.some((t) => String(t).toLowerCase().includes(q)));
    this.matches = this.nodes.flatMap((n, i) => (hit(n) ? [i] : []));
    this.matchSet = new Set(this.matches);
  }
}
