#!/usr/bin/env bash
# Build the wheel, install it into a fresh venv, and prove it is self-contained:
# no generic top-level names in site-packages, schema SQL shipped as package
# data, and `apalis-client migrate`/`verify` working from the installed copy.
set -euo pipefail
url="${1:?usage: wheel_check.sh ADMIN_DATABASE_URL}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip wheel -q --no-deps -w "$work/dist" . 2>&1 | grep -v '^WARNING: Location' || true
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$work"/dist/apalis_client-*.whl 2>&1 | grep -v '^WARNING: Location' || true
site=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for name in generated codegen schema queries tests; do
  if [ -e "$site/$name" ]; then echo "wheel check: generic top-level '$name' in site-packages" >&2; exit 1; fi
done
test -f "$site/apalis_client/schema/0001_base.sql" || { echo "wheel check: schema SQL not shipped" >&2; exit 1; }
test -f "$site/apalis_client/grant_templates/producer.sql" || { echo "wheel check: grant templates not shipped" >&2; exit 1; }
test -f "$site/apalis_generated/models.py" || { echo "wheel check: generated query layer not shipped" >&2; exit 1; }
test -f "$site/apalis_codegen/templates/queries.py.j2" || { echo "wheel check: codegen templates not shipped" >&2; exit 1; }
"$work/venv/bin/apalis-codegen" --help >/dev/null && "$work/venv/bin/python" -m apalis_codegen --help >/dev/null || { echo "wheel check: apalis-codegen / python -m apalis_codegen missing" >&2; exit 1; }
db="apalis_wheel_check_$$"
psql_url=$("$work/venv/bin/python" -c 'import sys; from psycopg.conninfo import make_conninfo; print(make_conninfo(sys.argv[1], dbname=sys.argv[2]))' "$url" "$db")
"$work/venv/bin/python" - "$url" "$db" <<'PY'
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    c.execute(f'CREATE DATABASE "{sys.argv[2]}"')
PY
cd "$work"  # away from the checkout, so only the installed copy can be imported
status=0
"$work/venv/bin/apalis-client" migrate --database-url "$psql_url" && "$work/venv/bin/apalis-client" verify --database-url "$psql_url" || status=$?
"$work/venv/bin/python" -c 'import apalis_client, sys; sys.exit(0 if "site-packages" in apalis_client.__file__ else 1)' || status=1
"$work/venv/bin/python" - "$url" "$db" <<'PY'
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    c.execute(f'DROP DATABASE IF EXISTS "{sys.argv[2]}" WITH (FORCE)')
PY
[ "$status" -eq 0 ] && echo "wheel check: OK"
exit "$status"
