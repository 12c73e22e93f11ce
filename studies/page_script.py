"""The dashboard page's style and script (the tables' own are in :mod:`studies.sortable_table`).

The script keeps the page's state in the URL fragment (``#trial=N&sort=...&state=...``) so a
reload keeps it; draws the network of the trial chosen (a click on a marker or a row, a hover
on a row of the front table) from the SVGs embedded in ``#drawings``; and, on a page written
by ``dashboard --watch S`` while the study runs, reloads the page every S seconds unless the
reader unticks ``#auto-refresh``.
"""
from __future__ import annotations

__all__ = ["PAGE_CSS", "PAGE_JS", "STATE_JS"]

PAGE_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.2em 2em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin: 1.2em 0 0.3em; }
h3 { font-size: 1.0em; margin: 0.4em 0 0.2em; color: #333; font-weight: 600; }
.meta { color: #555; font-size: 0.92em; margin: 0.3em 0; }
.counts { font-size: 1.02em; margin: 0.5em 0; }
.rule { background: #f4f6fb; border-left: 4px solid #888; padding: 0.5em 0.9em; font-size: 0.92em; max-width: 70em; }
.notice { background: #fff4ce; border: 1px solid #e0c35c; padding: 0.8em 1em; margin: 1em 0; font-size: 1.1em; }
.legend { font-size: 0.85em; margin: 0.6em 0; padding: 0.4em 0.6em; border: 1px solid #ddd; border-radius: 4px; }
.legend > div { margin: 0.15em 0; } .legend .lg { display: inline-flex; align-items: center; gap: 0.25em;
  margin: 0.1em 0.9em 0.1em 0; white-space: nowrap; }
.legend .num { display: inline-block; width: 1.3em; text-align: center; border: 1px solid #555; border-radius: 50%; }
.plot { margin: 0.6em 0 1.2em; border-top: 1px solid #ddd; min-width: 0; }
.plot.empty { color: #555; padding: 0.4em 0; } .plot[data-plot="importance-plot"] { max-width: 70em; }
.grid { display: grid; gap: 0 1.5em; grid-template-columns: minmax(0, 1fr); }
@media (min-width: 1000px) { .grid.two { grid-template-columns: minmax(0, 1fr) minmax(0, 1fr); } }
@media (min-width: 1250px) { .grid.front { grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); } }
.table-wrap { overflow-x: auto; }
#network .drawing { overflow-x: auto; border: 1px solid #ddd; border-radius: 4px; padding: 0.4em; background: #fff; }
#network .drawing svg { max-width: 100%; height: auto; display: block; cursor: zoom-in; }
#network .drawing.full svg { max-width: none; cursor: zoom-out; }
.button { display: inline-block; padding: 0.25em 0.7em; border: 1px solid #888; border-radius: 4px; color: #222;
  text-decoration: none; background: #f6f6f6; font-size: 0.9em; }
@media (max-width: 1000px) { body { margin: 0.8em 1em; } }
"""

# first on the page: the URL fragment as key=value pairs, read and written by every script
STATE_JS = r"""
window.pageState = (function () {
  function read() {
    var out = {}, h = location.hash.replace(/^#/, '');
    h.split('&').forEach(function (kv) { if (!kv) return; var i = kv.indexOf('=');
      if (i > 0) out[decodeURIComponent(kv.slice(0, i))] = decodeURIComponent(kv.slice(i + 1)); });
    return out;
  }
  return {
    get: function (k) { return read()[k]; },
    set: function (k, v) {
      var s = read(); if (v === '' || v === null || v === undefined) delete s[k]; else s[k] = String(v);
      var h = Object.keys(s).map(function (k) { return encodeURIComponent(k) + '=' + encodeURIComponent(s[k]); })
                             .join('&');
      history.replaceState(null, '', h ? '#' + h : location.pathname + location.search);
    }
  };
})();
"""

PAGE_JS = r"""
(function () {
  var data = JSON.parse(document.getElementById('drawings').textContent);
  var box = document.getElementById('network-drawing'), title = document.getElementById('network-title'),
      meta = document.getElementById('network-meta');
  function show(n, scroll) {
    n = String(n);
    var key = data.trial[n];
    if (!box || key === undefined) return false;
    box.innerHTML = data.svg[key]; box.dataset.trial = n;
    title.textContent = 'Network of trial ' + n; meta.textContent = data.meta[n] || '';
    document.querySelectorAll('tr.selected').forEach(function (r) { r.classList.remove('selected'); });
    document.querySelectorAll('tr[data-number="' + n + '"]').forEach(function (r) { r.classList.add('selected'); });
    window.pageState.set('trial', n);
    if (scroll) {
      var r = box.getBoundingClientRect();
      if (r.top < 0 || r.top > window.innerHeight) document.getElementById('network').scrollIntoView({behavior: 'smooth'});
    }
    return true;
  }
  window.showNetwork = show;
  if (box) box.addEventListener('click', function () { box.classList.toggle('full'); });
  document.querySelectorAll('#front-table tbody tr').forEach(function (r) {
    r.addEventListener('mouseenter', function () { show(r.dataset.number, false); });
    r.addEventListener('click', function () { show(r.dataset.number, false); });
  });
  document.querySelectorAll('#trials-table tbody tr').forEach(function (r) {
    r.addEventListener('click', function () { show(r.dataset.number, true); });
  });
  document.querySelectorAll('.plotly-graph-div').forEach(function (d) {
    if (d.on) d.on('plotly_click', function (e) {
      var p = e.points && e.points[0];
      if (p && p.customdata !== undefined && p.customdata !== null) show(p.customdata, true);
    });
  });
  var wanted = window.pageState.get('trial');
  if (wanted && !show(wanted, false)) window.pageState.set('trial', '');
  var every = parseInt(document.body.dataset.refresh || '0', 10), tick = document.getElementById('auto-refresh');
  if (every > 0 && tick) {
    tick.checked = window.pageState.get('refresh') !== 'off';
    var timer = null;
    function arm() { clearTimeout(timer); if (tick.checked) timer = setTimeout(function () { location.reload(); },
                                                                             every * 1000); }
    tick.addEventListener('change', function () { window.pageState.set('refresh', tick.checked ? '' : 'off'); arm(); });
    arm();
  }
})();
"""
