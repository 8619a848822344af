/* Field work without a signal (issue 18). A form marked data-offline that is sent while the
   phone is offline is kept on the phone (IndexedDB, files included) and sent when the
   connection returns; what the server then refuses (the case moved on meanwhile) is shown
   and kept until the officer dismisses it: nothing is lost silently. */
(function () {
  if (!('indexedDB' in window)) { return; }
  var DB = 'patrol-offline', STORE = 'outbox';
  function db() {
    return new Promise(function (ok, fail) {
      var r = indexedDB.open(DB, 1);
      r.onupgradeneeded = function () { r.result.createObjectStore(STORE, {keyPath: 'id', autoIncrement: true}); };
      r.onsuccess = function () { ok(r.result); };
      r.onerror = function () { fail(r.error); };
    });
  }
  function tx(mode, fn) {
    return db().then(function (d) {
      return new Promise(function (ok, fail) {
        var t = d.transaction(STORE, mode), out = fn(t.objectStore(STORE));
        t.oncomplete = function () { ok(out && out.result !== undefined ? out.result : out); };
        t.onerror = function () { fail(t.error); };
      });
    });
  }
  function all() { return tx('readonly', function (s) { return s.getAll(); }); }
  function banner(items) {
    var b = document.getElementById('outbox');
    if (!b) { return; }
    var waiting = items.filter(function (i) { return !i.error; }), failed = items.filter(function (i) { return i.error; });
    b.hidden = !items.length;
    b.querySelector('.waiting').textContent = waiting.length ? '离线待发送 ' + waiting.length + ' 项（联网后自动发送）' : '';
    var list = b.querySelector('.failed');
    list.innerHTML = '';
    failed.forEach(function (i) {
      var li = document.createElement('li');
      li.textContent = '未能提交（' + i.label + '，' + i.page + '）：' + i.error + ' ';
      var x = document.createElement('button');
      x.type = 'button'; x.textContent = '知道了';
      x.addEventListener('click', function () { tx('readwrite', function (s) { s.delete(i.id); }).then(refresh); });
      li.appendChild(x);
      list.appendChild(li);
    });
  }
  function refresh() { return all().then(banner); }
  function reason(resp) {
    return resp.text().then(function (html) {
      var m = /id="error-message">([^<]*)</.exec(html);
      var t = document.createElement('textarea');
      t.innerHTML = m ? m[1] : ('HTTP ' + resp.status);
      return t.value;
    });
  }
  var sending = false;
  function flush() {
    if (sending || !navigator.onLine) { return Promise.resolve(); }
    sending = true;
    return all().then(function (items) {
      return items.filter(function (i) { return !i.error; }).reduce(function (p, i) {
        return p.then(function () {
          var fd = new FormData();
          i.fields.forEach(function (kv) { if (kv[1] instanceof Blob) { fd.append(kv[0], kv[1], kv[2]); } else { fd.append(kv[0], kv[1]); } });
          return fetch(i.url, {method: 'POST', body: fd, credentials: 'same-origin'}).then(function (resp) {
            if (resp.ok) { return tx('readwrite', function (s) { s.delete(i.id); }); }
            return reason(resp).then(function (why) {
              i.error = why; return tx('readwrite', function (s) { s.put(i); });
            });
          });
        });
      }, Promise.resolve());
    }).catch(function () { /* still no connection: try again later */ }).then(function () {
      sending = false; return refresh();
    });
  }
  document.addEventListener('submit', function (ev) {
    var f = ev.target;
    if (!f.matches || !f.matches('form[data-offline]') || navigator.onLine) { return; }
    ev.preventDefault();
    var fd = new FormData(f, ev.submitter || undefined), fields = [];
    fd.forEach(function (v, k) { fields.push(v instanceof File ? [k, v, v.name] : [k, v]); });
    var label = f.dataset.offline + (ev.submitter && ev.submitter.value ? '：' + ev.submitter.textContent.trim() : '');
    tx('readwrite', function (s) {
      s.add({url: f.action, fields: fields, label: label, page: location.pathname, at: Date.now()});
    }).then(function () {
      f.reset();
      return refresh();
    });
  }, true);
  window.addEventListener('online', flush);
  window.patrolOutbox = {flush: flush, items: all};
  refresh().then(flush);
  if ('serviceWorker' in navigator) {
    navigator.serviceWorker.register('/sw.js', {scope: '/'}).then(function () {
      var keep = Array.prototype.map.call(document.querySelectorAll('[data-keep-offline]'), function (a) { return a.getAttribute('href'); });
      if (keep.length && navigator.serviceWorker.controller) { navigator.serviceWorker.controller.postMessage({keep: keep}); }
    }).catch(function () {});
  }
})();
