#!/usr/bin/env bash
# Make sure the system packages the tests need are present: PostgreSQL 15 with
# PostGIS 3 (tests start their own server on a free port) and Debian's chromium
# (map and web pages are tested in a real headless browser), Pango (WeasyPrint renders the
# PDF documents with it) and poppler-utils (tests read the PDFs back). Installs them with
# apt when missing and running as root; otherwise says what is missing.
set -euo pipefail
need=()
[ -f /usr/share/postgresql/15/extension/postgis.control ] && [ -x /usr/lib/postgresql/15/bin/postgres ] \
  || need+=(postgresql-15-postgis-3 postgresql-15)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
ls /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc >/dev/null 2>&1 || need+=(fonts-noto-cjk)
ldconfig -p 2>/dev/null | grep -q libpangoft2-1.0 || need+=(libpango-1.0-0 libpangoft2-1.0-0)
command -v pdftotext >/dev/null 2>&1 || need+=(poppler-utils)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing system packages: ${need[*]} (install them with apt as root; the tests that need them are skipped)" >&2
  exit 0
fi
echo "installing ${need[*]} with apt ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
