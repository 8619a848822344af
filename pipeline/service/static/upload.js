/* Resumable chunked upload through the JSON API: create → PUT chunks at offsets → finish.
   A cut connection resumes from the offset the server reports. */
(function () {
  var form = document.getElementById('upload-form');
  if (!form) { return; }
  var csrf = form.dataset.csrf, chunk = parseInt(form.dataset.chunk, 10);
  var bar = document.getElementById('progress'), msg = document.getElementById('upload-msg');
  var input = document.getElementById('file');
  function say(text, cls) { msg.textContent = text; msg.className = cls || ''; }
  function api(method, url, body, type) {
    var h = {'X-CSRF-Token': csrf};
    if (type) { h['Content-Type'] = type; }
    return fetch(url, {method: method, headers: h, body: body, credentials: 'same-origin'}).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        if (!r.ok) { throw new Error(j.detail ? (typeof j.detail === 'string' ? j.detail : JSON.stringify(j.detail)) : ('HTTP ' + r.status)); }
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
      say('Uploading 上传中 … ' + Math.round(100 * next.offset / file.size) + ' %');
      return send(file, next, 0);
    }, function (err) {
      if (tries >= 3 || /limit|larger|not an/i.test(err.message)) { throw err; }
      return api('GET', '/api/uploads/' + up.upload_id).then(function (cur) { return send(file, cur, tries + 1); });
    });
  }
  form.addEventListener('submit', function (e) {
    e.preventDefault();
    var file = input.files[0];
    if (!file) { say('Choose a file 请选择文件', 'err'); return; }
    form.querySelector('button').disabled = true;
    bar.value = 0;
    say('Starting 开始 …');
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
        if (up.offset) { say('Resuming 续传 from ' + Math.round(100 * up.offset / file.size) + ' %'); }
        return send(file, up, 0);
      })
      .then(function (up) { say('Checking 校验中 …'); return api('POST', '/api/uploads/' + up.upload_id + '/finish'); })
      .then(function (f) {
        try { window.localStorage.removeItem(key); } catch (err) { /* private mode */ }
        bar.value = 1;
        say('Uploaded 已上传: flight ' + f.flight_id + ' · ' + f.status + (f.queue === 'nightly' ? ' · queued for the nightly run 等待夜间处理' : ''), 'ok');
        var a = document.getElementById('flight-link'); a.href = '/flights'; a.hidden = false;
        a.dataset.flight = f.flight_id;
      })
      .catch(function (err) {
        if (!/^(HTTP 5|Failed to fetch|NetworkError)/.test(err.message)) {
          try { window.localStorage.removeItem(key); } catch (e2) { /* private mode */ }
        }
        say('Refused 拒绝: ' + err.message, 'err');
      })
      .then(function () { form.querySelector('button').disabled = false; });
  });
})();
