/* 待办: order the queue by distance from the phone's position (附近优先). */
(function () {
  var btn = document.getElementById('near-me'), table = document.getElementById('my-cases');
  if (!btn || !table) { return; }
  var msg = document.getElementById('near-msg'), body = table.tBodies[0];
  function metres(lat1, lon1, lat2, lon2) {
    var r = Math.PI / 180, dlat = (lat2 - lat1) * r, dlon = (lon2 - lon1) * r;
    var a = Math.sin(dlat / 2) * Math.sin(dlat / 2) +
            Math.cos(lat1 * r) * Math.cos(lat2 * r) * Math.sin(dlon / 2) * Math.sin(dlon / 2);
    return 6371008.8 * 2 * Math.atan2(Math.sqrt(a), Math.sqrt(1 - a));
  }
  btn.addEventListener('click', function () {
    if (!navigator.geolocation) { msg.textContent = '此设备无法定位'; return; }
    msg.textContent = '定位中…';
    navigator.geolocation.getCurrentPosition(function (p) {
      var rows = Array.prototype.filter.call(body.rows, function (r) { return r.dataset.lat; });
      rows.forEach(function (r) {
        var d = metres(p.coords.latitude, p.coords.longitude, +r.dataset.lat, +r.dataset.lon);
        r.dataset.distance = d;
        r.querySelector('.dist').textContent = d < 1000 ? Math.round(d) + ' m' : (d / 1000).toFixed(1) + ' km';
      });
      rows.sort(function (a, b) { return a.dataset.distance - b.dataset.distance; });
      rows.forEach(function (r) { body.appendChild(r); });
      msg.textContent = '已按距离排序';
    }, function () { msg.textContent = '无法获取位置（请允许定位）'; }, {enableHighAccuracy: true, timeout: 15000});
  });
})();
