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
      var fix = document.createElement('button');
      fix.type = 'button';
      fix.className = 'redraw-outline';
      fix.textContent = '修正轮廓';
      fix.style.cssText = 'display:block;margin-top:6px';
      fix.addEventListener('click', function () { P.map.closePopup(); startDraw(id); });
      box.appendChild(fix);
      try { window.parent.postMessage({patrolCase: id}, window.location.origin); } catch (err) { /* standalone */ }
    });
    drawControl();
    document.documentElement.setAttribute('data-patrol-hook', 'ready');
  }
  /* Drawing on the ortho: 勾绘漏检 (a structure the model missed becomes a case) and 修正轮廓
     (a case's outline redrawn). Click the corners, then 完成. */
  var draw = null, bar = null;
  function csrf() {
    try { return window.parent.document.getElementById('review').dataset.csrf || ''; } catch (e) { return ''; }
  }
  function say(text, bad) {
    var m = bar.querySelector('.draw-msg');
    m.textContent = text; m.style.color = bad ? '#b00020' : '#1b5e20';
  }
  function drawControl() {
    var P = window.patrolReport;
    bar = L.DomUtil.create('div', 'patrol-draw leaflet-bar');
    bar.style.cssText = 'background:#fff;padding:6px;font:14px sans-serif;max-width:260px';
    bar.innerHTML = '<button type="button" class="draw-start">勾绘漏检建筑</button>' +
      '<span class="draw-tools" hidden> <button type="button" class="draw-done">完成</button> ' +
      '<button type="button" class="draw-cancel">取消</button></span><div class="draw-msg" role="status"></div>';
    L.DomEvent.disableClickPropagation(bar);
    var Ctl = L.Control.extend({options: {position: 'topleft'}, onAdd: function () { return bar; }});
    P.map.addControl(new Ctl());
    bar.querySelector('.draw-start').addEventListener('click', function () { startDraw(null); });
    bar.querySelector('.draw-cancel').addEventListener('click', function () { stopDraw(); say(''); });
    bar.querySelector('.draw-done').addEventListener('click', finish);
    P.map.getContainer().addEventListener('click', function (e) {   // capture: parcels and cases open no popup
      if (!draw || e.target.closest('.leaflet-control')) { return; }
      e.stopPropagation(); e.preventDefault();
      draw.points.push(P.map.mouseEventToLatLng(e));
      draw.shape.setLatLngs(draw.points);
      say('已点 ' + draw.points.length + ' 个角点' + (draw.points.length >= 3 ? '，点“完成”保存' : ''));
    }, true);
  }
  function startDraw(caseId) {
    var P = window.patrolReport;
    stopDraw();
    draw = {caseId: caseId, points: [], shape: L.polygon([], {color: '#00e5ff', weight: 2, dashArray: '4'}).addTo(P.map)};
    P.map.getContainer().style.cursor = 'crosshair';
    bar.querySelector('.draw-tools').hidden = false;
    say(caseId ? '修正 ' + caseId + ' 的轮廓：依次点击建筑的角点' : '勾绘漏检建筑：依次点击建筑的角点');
  }
  function stopDraw() {
    if (draw) { draw.shape.remove(); }
    draw = null;
    window.patrolReport.map.getContainer().style.cursor = '';
    bar.querySelector('.draw-tools').hidden = true;
  }
  function finish() {
    if (!draw || draw.points.length < 3) { say('请至少点击三个角点后再点“完成”', true); return; }
    var ring = draw.points.map(function (p) { return [p.lng, p.lat]; });
    ring.push(ring[0]);
    var body = {geometry: {type: 'Polygon', coordinates: [ring]}};
    var url = draw.caseId ? '/api/cases/' + encodeURIComponent(draw.caseId) + '/outline' : '/api/structures';
    fetch(url, {method: 'POST', credentials: 'same-origin',
                headers: {'Content-Type': 'application/json', 'Accept': 'application/json', 'X-CSRF-Token': csrf()},
                body: JSON.stringify(body)})
      .then(function (r) { return r.json().then(function (j) { return {ok: r.ok, j: j}; }); })
      .then(function (res) {
        if (!res.ok) { say(res.j.detail_zh || res.j.detail || '保存失败', true); return; }
        var done = draw.caseId ? '已修正 ' + draw.caseId + ' 的轮廓' : '已补录案件 ' + res.j.case_no;
        var mark = draw.caseId ? 'outline:' + draw.caseId : res.j.case_no;
        document.documentElement.setAttribute('data-patrol-drawn', mark);
        stopDraw(); say(done);
        try { window.parent.postMessage({patrolDrawn: mark}, window.location.origin); } catch (e) { /* standalone */ }
      })
      .catch(function () { say('网络错误，未保存，请重试', true); });
  }
  hook();
})();
