// Flame graph viewer: lays out the tree embedded in #profile-data.
// Data: {frames: [[name, category, module, colour]],
//        nodes: [frame, value, depth, ...] (pre-order triples, root first),
//        unit, nsPerUnit, matchColor,
//        diff (differential graphs only): {before: [...], after: [...] (each node's
//          value in either profile, in node order), beforeTotal, afterTotal,
//          saturation, colors: {grew, shrank, same}}}.
// In a differential graph a node's value is its width: its share of the
// before total plus its share of the after total; the colour is the change.
// Every frame is a div.frame in #flamegraph carrying data-name (full name),
// data-kind (root, process, user, kernel, unsymbolized), data-value, data-depth
// (and data-before, data-after in a differential graph). #flamegraph's
// data-layout is "flame" (root at the bottom) or "icicle" (root at the top).
(function () {
  "use strict";

  var ROW = 17;          // pixels per stack level (16 + 1 gap)
  var MIN_PX = 0.5;      // frames narrower than this are not drawn
  var LABEL_MIN_PX = 22; // no text in frames narrower than this

  var data = JSON.parse(document.getElementById("profile-data").textContent);
  var chart = document.getElementById("flamegraph");
  var details = document.getElementById("details");
  var resetButton = document.getElementById("reset-zoom");
  var invertButton = document.getElementById("invert");
  var searchInput = document.getElementById("search");
  var searchResult = document.getElementById("search-result");

  var diff = data.diff || null;
  var maxDepth = 0;
  var nodes = build(data.nodes);
  var root = nodes[0];
  var zoomed = root;
  var matches = null; // Set of matching nodes while searching
  var inverted = false; // icicle: root at the top, callees below
  var elementNode = new WeakMap();

  function build(flat) {
    var all = [];
    var path = []; // path[d]: the latest node at depth d, i.e. the parent of depth d + 1
    for (var i = 0; i < flat.length; i += 3) {
      var frame = data.frames[flat[i]];
      var depth = flat[i + 2];
      var parent = depth > 0 ? path[depth - 1] : null;
      var node = {
        name: frame[0], kind: frame[1], module: frame[2], color: frame[3],
        value: flat[i + 1], depth: depth, parent: parent, children: [],
        // Children start at the parent's left edge; what is left over on the
        // right is the parent's own time (plus hidden narrow callees).
        x: parent ? parent.nextX : 0
      };
      node.nextX = node.x;
      if (parent) {
        parent.children.push(node);
        parent.nextX += node.value;
      }
      if (diff) {
        node.before = diff.before[all.length];
        node.after = diff.after[all.length];
        node.color = diffColor(node);
      }
      path[depth] = node;
      if (depth > maxDepth) maxDepth = depth;
      all.push(node);
    }
    return all;
  }

  // --- formatting ---------------------------------------------------------

  function count(n) { return n.toLocaleString("en-US"); }

  function duration(ns) {
    var units = [["s", 1e9], ["ms", 1e6], ["µs", 1e3]];
    for (var i = 0; i < units.length; i++) {
      var v = ns / units[i][1];
      // Same as the Python summary: three significant digits, no trailing zeros.
      if (v >= 1) {
        return (v < 100 ? String(Number(v.toPrecision(3))) : v.toFixed(0)) + " " + units[i][0];
      }
    }
    return ns + " ns";
  }

  function valueText(value) {
    var text = count(value) + " " + data.unit;
    if (data.nsPerUnit && value >= 1000) text += " (" + duration(value * data.nsPerUnit) + ")";
    return text;
  }

  function percent(part, whole) {
    return whole > 0 ? (100 * part / whole).toFixed(2) + "%" : "0.00%";
  }

  // --- differential colours ---------------------------------------------------

  function share(value, total) { return total > 0 ? value / total : 0; }

  // How much of its profile's total a node gained (> 0) or lost (< 0).
  function change(node) {
    return share(node.after, diff.afterTotal) - share(node.before, diff.beforeTotal);
  }

  function mix(from, to, t) {
    return from.map(function (c, i) { return Math.round(c + (to[i] - c) * t); });
  }

  // The change relative to the larger of the two shares: -1 (vanished) to +1 (new).
  function relativeChange(node) {
    var before = share(node.before, diff.beforeTotal);
    var after = share(node.after, diff.afterTotal);
    var larger = Math.max(before, after);
    return larger > 0 ? (after - before) / larger : 0;
  }

  // Neutral for no change, fully red (grew) or blue (shrank) from a relative
  // change of diff.saturation (a doubling or halving), in proportion below it,
  // so noise of a few percent stays nearly neutral.
  function diffColor(node) {
    var relative = relativeChange(node);
    var t = Math.min(1, Math.abs(relative) / diff.saturation);
    var rgb = mix(diff.colors.same, relative >= 0 ? diff.colors.grew : diff.colors.shrank, t);
    // Black text stops being readable on the saturated end.
    var luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2];
    node.textColor = luminance < 110 ? "#fff" : "";
    return "rgb(" + rgb.join(", ") + ")";
  }

  function changeText(node) {
    var points = 100 * change(node);
    var text = (points >= 0 ? "+" : "\u2212") + Math.abs(points).toFixed(2) + " pp";
    if (node.before > 0) {
      var ratio = share(node.after, diff.afterTotal) / share(node.before, diff.beforeTotal) - 1;
      text += " (" + (ratio >= 0 ? "+" : "\u2212") + Math.abs(100 * ratio).toFixed(0) + "%)";
    } else if (node.after > 0) {
      text += " (new)";
    }
    return text;
  }

  // --- layout ---------------------------------------------------------------

  // Flame graph: root at the bottom; icicle: root at the top.
  function placeRow(element, depth) {
    if (inverted) element.style.top = depth * ROW + "px";
    else element.style.bottom = depth * ROW + "px";
  }

  function frameElement(node, leftPct, widthPct, widthPx, extraClass) {
    var el = document.createElement("div");
    el.className = extraClass ? "frame " + extraClass : "frame";
    el.style.left = leftPct + "%";
    el.style.width = widthPct + "%";
    var matched = matches && matches.has(node);
    el.style.background = matched ? data.matchColor : node.color;
    if (node.textColor && !matched) el.style.color = node.textColor;
    placeRow(el, node.depth);
    el.dataset.name = node.name;
    el.dataset.kind = node.kind;
    el.dataset.value = String(node.value);
    el.dataset.depth = String(node.depth);
    if (diff) {
      el.dataset.before = String(node.before);
      el.dataset.after = String(node.after);
    }
    if (widthPx >= LABEL_MIN_PX) el.textContent = node.name;
    elementNode.set(el, node);
    return el;
  }

  function render() {
    if (!root || root.value <= 0) {
      var empty = document.createElement("div");
      empty.className = "empty";
      empty.textContent = "No samples in this profile.";
      chart.replaceChildren(empty);
      chart.style.height = "";
      chart.dataset.rendered = "0";
      return;
    }
    var width = chart.clientWidth || 1;
    var fragment = document.createDocumentFragment();
    var drawn = 0;
    // Callers of the zoomed frame stay visible, full width, as a way back.
    for (var a = zoomed.parent; a; a = a.parent) {
      fragment.appendChild(frameElement(a, 0, 100, width, "ancestor"));
      drawn++;
    }
    var scale = 100 / zoomed.value;
    var stack = [zoomed];
    while (stack.length) {
      var node = stack.pop();
      var widthPct = node.value * scale;
      var widthPx = widthPct * width / 100;
      if (widthPx < MIN_PX) continue; // children are narrower still
      var leftPct = (node.x - zoomed.x) * scale;
      fragment.appendChild(frameElement(node, leftPct, widthPct, widthPx,
        node === zoomed && zoomed !== root ? "zoomed" : ""));
      drawn++;
      for (var i = node.children.length - 1; i >= 0; i--) stack.push(node.children[i]);
    }
    chart.style.height = (maxDepth + 1) * ROW + "px";
    chart.replaceChildren(fragment);
    chart.dataset.rendered = String(drawn);
    chart.dataset.zoomed = zoomed.name;
    resetButton.disabled = zoomed === root;
  }

  function setInverted(value) {
    inverted = value;
    chart.dataset.layout = inverted ? "icicle" : "flame";
    invertButton.setAttribute("aria-pressed", String(inverted));
    render();
  }

  function zoom(node) {
    zoomed = node;
    render();
  }

  // --- details ---------------------------------------------------------------

  function span(className, text) {
    var el = document.createElement("span");
    el.className = className;
    el.textContent = text;
    return el;
  }

  function diffParts(node) {
    return [span("before", "before " + valueText(node.before) + " (" +
        percent(node.before, diff.beforeTotal) + ")"), span("sep", " · "),
      span("after", "after " + valueText(node.after) + " (" +
        percent(node.after, diff.afterTotal) + ")"), span("sep", " · "),
      span("change", changeText(node))];
  }

  function showDetails(node) {
    var parts = [span("name", node.name), span("sep", " — ")];
    if (diff) {
      parts = parts.concat(diffParts(node));
    } else {
      parts.push(span("value", valueText(node.value)), span("sep", " · "),
        span("percent", percent(node.value, root.value) + " of total"));
    }
    if (!diff && zoomed !== root && node.depth >= zoomed.depth) { // not for the callers above
      parts.push(span("sep", " · "), span("percent-zoomed",
        percent(node.value, zoomed.value) + " of zoomed frame"));
    }
    var where = node.kind + (node.module ? " · " + node.module : "");
    parts.push(span("sep", " · "), span("kind", where));
    details.replaceChildren.apply(details, parts);
    details.dataset.name = node.name;
  }

  function clearDetails() {
    details.textContent = "\u00a0";
    delete details.dataset.name;
  }

  function nodeAt(event) {
    var el = event.target.closest && event.target.closest(".frame");
    return el ? elementNode.get(el) : null;
  }

  chart.addEventListener("mouseover", function (event) {
    var node = nodeAt(event);
    if (node) showDetails(node);
  });
  chart.addEventListener("mouseleave", clearDetails);
  chart.addEventListener("click", function (event) {
    var node = nodeAt(event);
    if (!node) return;
    zoom(node);
    showDetails(node);
  });
  resetButton.addEventListener("click", function () { zoom(root); });
  invertButton.addEventListener("click", function () { setInverted(!inverted); });
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && document.activeElement !== searchInput) zoom(root);
  });

  // --- search ------------------------------------------------------------------

  function search(term) {
    if (!term) {
      matches = null;
      searchResult.textContent = "";
    } else {
      var needle = term.toLowerCase();
      matches = new Set();
      nodes.forEach(function (n) {
        if (n.name.toLowerCase().indexOf(needle) >= 0) matches.add(n);
      });
      // A match inside another match is already counted by its ancestor.
      var matched = 0, before = 0, after = 0;
      matches.forEach(function (n) {
        for (var a = n.parent; a; a = a.parent) if (matches.has(a)) return;
        matched += n.value;
        if (diff) { before += n.before; after += n.after; }
      });
      searchResult.textContent = diff
        ? "Matched: before " + percent(before, diff.beforeTotal) + ", after " +
          percent(after, diff.afterTotal)
        : "Matched: " + percent(matched, root.value);
    }
    render();
  }

  var searchTimer = 0;
  searchInput.addEventListener("input", function () {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(function () { search(searchInput.value); }, 150);
  });
  searchInput.addEventListener("keydown", function (event) {
    if (event.key === "Escape") { searchInput.value = ""; search(""); }
  });

  var resizeTimer = 0;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(render, 100);
  });

  setInverted(false);
})();
