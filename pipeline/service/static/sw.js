/* Offline pages for officers in the field (issue 18): every page and picture an officer has
   opened is kept, and served from the phone when there is no signal. Network first: online,
   the phone always shows the server's page. Downloads and the API are never kept. */
var CACHE = 'patrol-pages-v1';
self.addEventListener('install', function () { self.skipWaiting(); });
self.addEventListener('activate', function (e) { e.waitUntil(self.clients.claim()); });
self.addEventListener('fetch', function (e) {
  var req = e.request, url = new URL(req.url);
  if (req.method !== 'GET' || url.origin !== self.location.origin) { return; }
  if (/^\/(api|export|documents|stats\.xlsx|login|logout|sw\.js)/.test(url.pathname)) { return; }
  e.respondWith(fetch(req).then(function (resp) {
    if (resp.ok && !resp.redirected && resp.type === 'basic') {
      var copy = resp.clone();
      caches.open(CACHE).then(function (c) { c.put(req, copy); });
    }
    return resp;
  }).catch(function () {
    return caches.match(req).then(function (hit) {
      return hit || new Response('<!doctype html><meta charset="utf-8"><meta name="viewport" content="width=device-width">' +
        '<p style="font:16px sans-serif;padding:16px">离线：此页面未曾在本机打开，联网后再试。</p>',
        {status: 503, headers: {'Content-Type': 'text/html; charset=utf-8'}});
    });
  }));
});
self.addEventListener('message', function (e) {
  if (e.data && e.data.keep) {          // pages to keep now (the officer's queue)
    caches.open(CACHE).then(function (c) {
      e.data.keep.forEach(function (u) { c.add(u).catch(function () {}); });
    });
  }
  if (e.data && e.data.forget) { caches.delete(CACHE); }
});
