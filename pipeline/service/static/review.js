/* Case table of the review page: filter by status, search, sort by column, show on the map. */
(function () {
  var table = document.getElementById('cases');
  if (!table) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var search = document.getElementById('search'), status = document.getElementById('status-filter');
  var count = document.getElementById('count');
  function apply() {
    var q = (search.value || '').trim().toLowerCase(), st = status.value, n = 0;
    rows.forEach(function (r) {
      var show = (!st || r.dataset.status === st) && (!q || r.textContent.toLowerCase().indexOf(q) >= 0);
      r.hidden = !show; if (show) { n++; }
    });
    count.textContent = n;
  }
  search.addEventListener('input', apply);
  status.addEventListener('change', apply);
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
    if (!th.dataset.sort) { return; }
    th.addEventListener('click', function () {
      var dir = th.classList.contains('asc') ? -1 : 1, num = th.dataset.sort === 'num';
      Array.prototype.forEach.call(th.parentNode.cells, function (c) { c.classList.remove('asc', 'desc'); });
      th.classList.add(dir === 1 ? 'asc' : 'desc');
      rows.sort(function (a, b) {
        var x = a.cells[i].dataset.v || a.cells[i].textContent, y = b.cells[i].dataset.v || b.cells[i].textContent;
        if (num) { return dir * ((parseFloat(x) || 0) - (parseFloat(y) || 0)); }
        return dir * x.localeCompare(y);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  var frame = document.getElementById('map');
  function select(id) {
    rows.forEach(function (r) { r.classList.toggle('sel', r.dataset.case === id); });
  }
  table.addEventListener('click', function (e) {
    var b = e.target.closest('button.show');
    if (!b) { return; }
    var w = frame.contentWindow;
    if (w && w.patrolReport && w.patrolReport.openCase) { w.patrolReport.openCase(b.dataset.case); }
    select(b.dataset.case);
  });
  window.addEventListener('message', function (e) {
    if (e.origin === window.location.origin && e.data && e.data.patrolCase) { select(e.data.patrolCase); }
    if (e.origin === window.location.origin && e.data && e.data.patrolDrawn) {   // a drawn case: list it
      setTimeout(function () { window.location.reload(); }, 1500);
    }
  });
  apply();
})();
/* On a phone the map and the list take turns (地图 / 列表); "Map" on a row shows the map. */
(function () {
  var review = document.getElementById('review');
  if (!review) { return; }
  var buttons = document.querySelectorAll('.view-switch button');
  function show(view) {
    review.dataset.view = view;
    Array.prototype.forEach.call(buttons, function (b) { b.classList.toggle('on', b.dataset.view === view); });
  }
  Array.prototype.forEach.call(buttons, function (b) {
    b.addEventListener('click', function () { show(b.dataset.view); });
  });
  Array.prototype.forEach.call(document.querySelectorAll('#cases button.show'), function (b) {
    b.addEventListener('click', function () { show('map'); });
  });
})();
