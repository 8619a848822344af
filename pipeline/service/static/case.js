/* Case page: the phone's position goes with an on-site photo (used when the photo has no GPS). */
(function () {
  var form = document.getElementById('media-form');
  if (!form || !navigator.geolocation) { return; }
  var msg = document.getElementById('media-pos');
  form.querySelector('input[type=file]').addEventListener('change', function () {
    msg.textContent = '定位中…';
    navigator.geolocation.getCurrentPosition(function (p) {
      document.getElementById('media-lat').value = p.coords.latitude.toFixed(7);
      document.getElementById('media-lon').value = p.coords.longitude.toFixed(7);
      msg.textContent = '已定位 ±' + Math.round(p.coords.accuracy) + ' m';
    }, function () { msg.textContent = '未能定位（照片自带的位置仍可用）'; }, {enableHighAccuracy: true, timeout: 15000});
  });
})();
