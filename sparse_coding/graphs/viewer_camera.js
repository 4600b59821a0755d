/* Pan and zoom: a world point (x, y) is drawn at (tx + x * zoom, ty + y * zoom) on the stage. */
class Camera {
  constructor(stage) {
    Object.assign(this, { stage, tx: 0, ty: 0, zoom: 1 });
  }

  size() {
    return [this.stage.clientWidth || 800, this.stage.clientHeight || 600];
  }

  /* The whole box [left, top, right, bottom] centred, at most maxZoom. */
  fit(box, maxZoom) {
    if (!box) return;
    const [w, h] = this.size();
    this.zoom = Math.min(w / (box[2] - box[0]), h / (box[3] - box[1]), maxZoom);
    this.tx = (w - (box[2] - box[0]) * this.zoom) / 2 - box[0] * this.zoom;
    this.ty = (h - (box[3] - box[1]) * this.zoom) / 2 - box[1] * this.zoom;
  }

  /* The first view: the whole graph if it fits at a legible zoom (a token axis down to WHOLE_TOKENS_ZOOM,
   * rather than cut one column off), else its top at that zoom (on a token axis, its top right: the last
   * token, whose next token the graph explains). */
  firstView(box, tokenAxis) {
    this.fit(box, MAX_ZOOM);
    if (!box || this.zoom >= (tokenAxis ? WHOLE_TOKENS_ZOOM : LEGIBLE_ZOOM)) return;
    this.zoom = LEGIBLE_ZOOM;
    const spare = this.size()[0] - (box[2] - box[0]) * this.zoom;
    this.tx = (tokenAxis ? Math.min(0, spare) : Math.max(0, spare / 2)) - box[0] * this.zoom;
    this.ty = -box[1] * this.zoom;
  }

  /* The node's box in the middle of the stage, at a legible zoom or closer. */
  centreOn(n) {
    this.zoom = Math.max(this.zoom, LEGIBLE_ZOOM);
    this.tx = this.stage.clientWidth / 2 - (n.x + NODE_W / 2) * this.zoom;
    this.ty = this.stage.clientHeight / 2 - (n.y + NODE_H / 2) * this.zoom;
  }

  /* Keeps the point (mx, my) of the stage where it is while zooming by `factor`. */
  zoomAt(mx, my, factor) {
    this.tx = mx - (mx - this.tx) * factor; this.ty = my - (my - this.ty) * factor;
    this.zoom *= factor;
  }

  /* The world point under a mouse event on `canvas`. */
  world(evt, canvas) {
    const box = canvas.getBoundingClientRect();
    return [(evt.clientX - box.left - this.tx) / this.zoom, (evt.clientY - box.top - this.ty) / this.zoom];
  }
}
