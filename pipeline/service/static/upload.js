/* Resumable chunked upload through the JSON API: create → PUT chunks at offsets → finish.
   A cut connection resumes from the offset the server reports. */
(function () {
  var form = document.getElementById('upload-form');
  if (!form) { return; }
  var csrf = form.dataset.csrf, chunk = parseInt(form.dataset.chunk, 10);
  var bar = document.getElementById('progress'), msg = document.getElementById('upload-msg');
  var input = document.getElementById('file');
  var en = form.dataset.lang === 'en';
  function L(zh, english) { return en ? english : zh; }          // the page's language (report.language)
  function say(text, cls) { msg.textContent = text; msg.className = cls || ''; }
  function api(method, url, body, type) {
    var h = {'X-CSRF-Token': csrf};
    if (type) { h['Content-Type'] = type; }
    return fetch(url, {method: method, headers: h, body: body, credentials: 'same-origin'}).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        var detail = (!en && j.detail_zh) || j.detail;
        if (!r.ok) { throw new Error(detail ? (typeof detail === 'string' ? detail : JSON.stringify(detail)) : ('HTTP ' + r.status)); }
        return j;
      });
    });
  }
  function send(file, up, tries) {
    if (up.offset >= file.size) { return Promise.resolve(up); }
    var end = Math.min(file.size, up.offset + chunk);
    return api('PUT', '/api/uploads/' + up.upload_id + '?offset=' + up.offset, file.slice(up.offset, end),
               'application/octet-stream').then(function (next) {
      bar.value = next.offset / file.size;
      say(L('上传中 … ', 'Uploading … ') + Math.round(100 * next.offset / file.size) + ' %');
      return send(file, next, 0);
    }, function (err) {
      if (tries >= 3 || /limit|larger|not an/i.test(err.message)) { throw err; }
      return api('GET', '/api/uploads/' + up.upload_id).then(function (cur) { return send(file, cur, tries + 1); });
    });
  }
  form.addEventListener('submit', function (e) {
    e.preventDefault();
    var file = input.files[0];
    if (!file) { say(L('请选择文件', 'Choose a file'), 'err'); return; }
    form.querySelector('button').disabled = true;
    bar.value = 0;
    say(L('开始 …', 'Starting …'));
    // the same file picked again after a cut (even after a reload) resumes its upload
    var key = 'patrol-upload:' + [file.name, file.size, file.lastModified].join(':');
    var known = null;
    try { known = window.localStorage.getItem(key); } catch (err) { /* private mode */ }
    var start = (known ? api('GET', '/api/uploads/' + known).catch(function () { return null; }) : Promise.resolve(null))
      .then(function (up) {
        if (up && up.size === file.size) { return up; }
        return api('POST', '/api/uploads', JSON.stringify({filename: file.name, size: file.size}), 'application/json');
      });
    start
      .then(function (up) {
        try { window.localStorage.setItem(key, up.upload_id); } catch (err) { /* private mode */ }
        if (up.offset) { say(L('续传，自 ', 'Resuming from ') + Math.round(100 * up.offset / file.size) + ' %'); }
        return send(file, up, 0);
      })
      .then(function (up) { say(L('校验中 …', 'Checking …')); return api('POST', '/api/uploads/' + up.upload_id + '/finish'); })
      .then(function (f) {
        try { window.localStorage.removeItem(key); } catch (err) { /* private mode */ }
        bar.value = 1;
        say(L('已上传：航线 ', 'Uploaded: flight ') + f.flight_id + (f.queue === 'nightly' ? L(' · 待夜间处理', ' · queued for the nightly run') : ''), 'ok');
        var a = document.getElementById('flight-link'); a.href = '/flights'; a.hidden = false;
        a.dataset.flight = f.flight_id;
      })
      .catch(function (err) {
        if (!/^(HTTP 5|Failed to fetch|NetworkError)/.test(err.message)) {
          try { window.localStorage.removeItem(key); } catch (e2) { /* private mode */ }
        }
        say(L('未能上传：', 'Refused: ') + err.message, 'err');
      })
      .then(function () { form.querySelector('button').disabled = false; });
  });
})();
