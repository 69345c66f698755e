// Click-to-zoom for the SVG flame graph; the SVG stays a plain picture where
// scripts do not run (e.g. in <img>). Frames are g.frame with data-offset and
// data-value (value units) and data-depth; the root frame has depth 0.
(function () {
  "use strict";
  var svg = document.documentElement;
  var left = Number(svg.getAttribute("data-margin"));
  var width = Number(svg.getAttribute("data-graph-width"));
  var charWidth = Number(svg.getAttribute("data-char-width"));
  var frames = Array.prototype.slice.call(document.querySelectorAll("g.frame"));
  var root = null;

  frames.forEach(function (g) {
    g.offset = Number(g.getAttribute("data-offset"));
    g.value = Number(g.getAttribute("data-value"));
    g.depth = Number(g.getAttribute("data-depth"));
    g.rect = g.querySelector("rect");
    g.label = g.querySelector("text");
    if (g.depth === 0) root = g;
    g.addEventListener("click", function () { zoom(g); });
  });

  function fit(name, px) {
    var n = Math.floor((px - 6) / charWidth);
    if (n < 3) return "";
    return name.length <= n ? name : name.slice(0, n - 2) + "..";
  }

  function place(g, x, w, faded) {
    g.style.display = "";
    g.style.opacity = faded ? "0.6" : "";
    g.rect.setAttribute("x", x.toFixed(2));
    g.rect.setAttribute("width", w.toFixed(2));
    g.label.setAttribute("x", (x + 3).toFixed(2));
    g.label.textContent = fit(g.getAttribute("data-name"), w);
  }

  function zoom(target) {
    var start = target.offset, end = target.offset + target.value;
    var scale = width / target.value;
    frames.forEach(function (g) {
      var inside = g.offset >= start && g.offset + g.value <= end;
      if (g.depth >= target.depth && inside) {
        place(g, left + (g.offset - start) * scale, g.value * scale, false);
      } else if (g.depth < target.depth && g.offset <= start && g.offset + g.value >= end) {
        place(g, left, width, true); // a caller of the zoomed frame
      } else {
        g.style.display = "none";
      }
    });
    svg.setAttribute("data-zoomed", target.getAttribute("data-name"));
  }

  var hint = document.getElementById("hint");
  if (hint && root) hint.removeAttribute("display");

  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && root) zoom(root);
  });
})();
