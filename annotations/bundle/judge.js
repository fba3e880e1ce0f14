// Offline judging page of a gill html-bundle: votes live in localStorage under the bundle id plus the judge's
// name (a second bundle opened under the same name starts empty) and are saved as votes-<bundle>-<name>.json.
(function () {
  "use strict";
  var items = (window.GILL_BUNDLE && window.GILL_BUNDLE.items) || [];
  var bundle = (window.GILL_BUNDLE && window.GILL_BUNDLE.bundle) || "unknown";
  var judge = null, index = 0, votes = {}, current = {};
  var $ = function (id) { return document.getElementById(id); };
  function key() { return "gill-bundle-votes:" + bundle + ":" + judge; }
  function load() { try { votes = JSON.parse(localStorage.getItem(key()) || "{}"); } catch (e) { votes = {}; } }
  function store() { try { localStorage.setItem(key(), JSON.stringify(votes)); } catch (e) { /* private mode */ } }
  function done() { return Object.keys(votes).length; }
  function firstOpen() { for (var i = 0; i < items.length; i++) { if (!votes[items[i].id]) { return i; } } return items.length; }
  function show() {
    $("progress").textContent = done() + " / " + items.length + " done";
    if (index >= items.length) { $("task").hidden = true; $("progress").textContent += " - all done, save your votes file"; return; }
    var item = items[index];
    $("task").hidden = false;
    $("prompt").textContent = item.prompt;  // text, never HTML
    $("left").src = item.left; $("right").src = item.right;
    var buttons = document.querySelectorAll("button[data-q]");
    for (var b = 0; b < buttons.length; b++) {
      buttons[b].classList.toggle("chosen", current[buttons[b].dataset.q] === buttons[b].dataset.v);
    }
  }
  function goTo(i) {  // a fresh answer sheet, pre-filled with an earlier vote on that item
    index = i;
    var item = items[index];
    current = item && votes[item.id] ? { alignment: votes[item.id].alignment, realism: votes[item.id].realism } : {};
    show();
  }
  function choose(question, value) {
    current[question] = value;
    if (current.alignment && current.realism) {
      votes[items[index].id] = { item_id: items[index].id, alignment: current.alignment, realism: current.realism };
      store(); goTo(firstOpen()); return;
    }
    show();
  }
  function start() {
    var name = $("judge").value.trim();
    if (!name) { $("judge").focus(); return; }
    judge = name; load(); goTo(firstOpen());
  }
  function save() {
    if (!judge) { return; }
    var list = Object.keys(votes).map(function (k) { return votes[k]; });
    var blob = new Blob([JSON.stringify({ bundle: bundle, judge: judge, votes: list }, null, 1)],
                        { type: "application/json" });
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "votes-" + bundle + "-" + judge.replace(/[^A-Za-z0-9_.-]/g, "_") + ".json";
    document.body.appendChild(a); a.click(); a.remove();
  }
  $("start").addEventListener("click", start);
  $("save").addEventListener("click", save);
  $("back").addEventListener("click", function () { if (index > 0) { goTo(index - 1); } });
  document.addEventListener("click", function (e) {
    var t = e.target; if (t && t.dataset && t.dataset.q && judge) { choose(t.dataset.q, t.dataset.v); }
  });
  document.addEventListener("keydown", function (e) {
    if (!judge || e.target === $("judge")) { return; }
    var map = { "1": ["alignment", "left"], "2": ["alignment", "right"], "3": ["alignment", "same"],
                "q": ["realism", "left"], "w": ["realism", "right"], "e": ["realism", "same"] };
    if (map[e.key]) { choose(map[e.key][0], map[e.key][1]); }
  });
})();
