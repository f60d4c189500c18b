#!/bin/sh
# Seeds fuzz/corpus/decoder with every hex example of spec/vectors/*.json
# (valid frames and malformed inputs), one file per vector, named after it.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/corpus/decoder"
mkdir -p "$out"
python3 - "$here/../spec/vectors" "$out" <<'PY'
import json, pathlib, sys
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
n = 0
for path in sorted(src.glob("*.json")):
    for v in json.loads(path.read_text())["vectors"]:
        (out / f"{path.stem}-{v['name']}").write_bytes(bytes.fromhex(v["hex"]))
        n += 1
print(f"wrote {n} seeds to {out}")
PY
