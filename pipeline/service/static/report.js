/* 地面巡查上报: fill the position from the phone. */
(function () {
  var btn = document.getElementById('locate'), msg = document.getElementById('locate-msg');
  if (!btn) { return; }
  function locate() {
    if (!navigator.geolocation) { msg.textContent = '此设备无法定位，请手动填写'; return; }
    msg.textContent = '定位中…';
    navigator.geolocation.getCurrentPosition(function (p) {
      document.getElementById('report-lat').value = p.coords.latitude.toFixed(7);
      document.getElementById('report-lon').value = p.coords.longitude.toFixed(7);
      msg.textContent = '已定位 ±' + Math.round(p.coords.accuracy) + ' m';
    }, function () { msg.textContent = '未能定位（请允许定位或手动填写）'; }, {enableHighAccuracy: true, timeout: 15000});
  }
  btn.addEventListener('click', locate);
  locate();
})();
