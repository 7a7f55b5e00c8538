#!/bin/sh
# Installs gpuhub_labstart.py and its .pth file (which defers rfc3987_syntax for every
# Python of the image) into the image's site-packages, compiled. Run by the lab image's
# and the hub image's Dockerfiles, with this folder bind-mounted; each then checks its own
# start is the leaner one.
set -e
here=$(dirname "$0")
site="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$here/gpuhub_labstart.py" "$here/gpuhub-labstart.pth" "$site/"
chmod 0644 "$site/gpuhub_labstart.py" "$site/gpuhub-labstart.pth"
python3 -m py_compile "$site/gpuhub_labstart.py"
