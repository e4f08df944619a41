#!/usr/bin/env bash
# Run bench/gpu_restore.py on a GPU machine that has no network (the device kind).
#
# That machine has Python with torch, transformers and cuda-bindings, but not CRIU: carry the
# unpacked CRIU folder made by `make install` as .criu/criu-<version> (CRIU >= 4.2, its apt/
# cache left out) and wheels in .whl/ of what the machine's Python lacks: protobuf (pycriu's
# messages) and, for the agent's tests, cryptography with cffi and pycparser.
#   bench/device-run.sh run --explore --restore-modes ordered ...   (arguments: gpu_restore.py's)
#   bench/device-run.sh pytest tests/gpu ...                         (the GPU tests: pytest's)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${THAW_CACHE:-$HOME/.cache/thaw}
carried=$(compgen -G '.criu/criu-[0-9]*' | sort -V | tail -1 || true)
if [[ -n $carried && ! -f $CACHE/criu-current/criu.json ]]; then
    name=$(basename "$carried")
    mkdir -p "$CACHE"
    cp -a "$carried" "$CACHE/"
    # the folder's scripts name the cache they were unpacked into: point them here
    old=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["binary"].split("/'"$name"'/")[0])' \
        "$CACHE/$name/criu.json")
    sed -i "s#$old#$CACHE#g" "$CACHE/$name/criu.json" "$CACHE/$name/bin/criu"
    ln -sfn "$CACHE/$name" "$CACHE/criu-current"
fi
export THAW_CACHE=$CACHE
export PYTHONPATH=$CACHE/criu-current/root/usr/lib/python3/dist-packages${PYTHONPATH:+:$PYTHONPATH}
if compgen -G '.whl/*.whl' >/dev/null; then  # what the machine's Python lacks (protobuf, cryptography)
    [[ -d /tmp/thaw-site ]] || python3 -m pip install -q --no-index --no-deps --target /tmp/thaw-site .whl/*.whl
    export PYTHONPATH=/tmp/thaw-site:$PYTHONPATH
fi
for q in /sys/block/vd*/queue; do
    echo "$q: scheduler=$(cat "$q/scheduler") nr_requests=$(cat "$q/nr_requests")" \
        "max_sectors_kb=$(cat "$q/max_sectors_kb") max_segments=$(cat "$q/max_segments")" \
        "max_segment_size=$(cat "$q/max_segment_size")"
done 2>/dev/null || true
echo "work dir on: $(df -T . | tail -1)"
export PYTHONUNBUFFERED=1
if [[ ${1:-} == pytest ]]; then
    shift
    exec python3 -m pytest "$@"
fi
exec python3 bench/gpu_restore.py "$@"
