/* Added by the web service to the report map: a case popup gets an "Open case" link, and the
   review page can open a case on the map (same origin). */
(function () {
  function hook() {
    var P = window.patrolReport;
    if (!P || !P.ready || !P.map) { return setTimeout(hook, 50); }
    P.map.on('popupopen', function (e) {
      var src = e.popup._source, id = null;
      Object.keys(P.cases).forEach(function (k) {
        if (P.cases[k].marker === src || P.cases[k].polygon === src) { id = k; }
      });
      var box = e.popup.getElement() && e.popup.getElement().querySelector('.patrol-popup');
      if (!id || !box || box.querySelector('a.open-case')) { return; }
      var a = document.createElement('a');
      a.className = 'open-case';
      a.href = '/cases/' + encodeURIComponent(id);
      a.target = '_top';
      a.textContent = '打开案件 ' + id;
      a.style.cssText = 'display:block;margin-top:6px;font-weight:bold';
      box.appendChild(a);
      try { window.parent.postMessage({patrolCase: id}, window.location.origin); } catch (err) { /* standalone */ }
    });
    document.documentElement.setAttribute('data-patrol-hook', 'ready');
  }
  hook();
})();
