#!/bin/sh
# Seeds fuzz/corpus/<target>/ for every target, one file per seed, named after it:
#   decoder   every hex example of spec/vectors/*.json (valid frames and malformed inputs)
#   pipeline  examples/*.yaml, the YAML examples of spec/pipeline.md, and inputs
#             nested 5,000 deep (flow sequences and mappings, block sequences) and a
#             deep block mapping: the depths that took the server down (issue 14)
#   rest      the same pipelines as REST requests (see fuzz_targets/rest.rs for the
#             layout): JSON and YAML creates, a multipart upload, paths, tokens
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python3 - "$here/.." "$here/corpus" <<'PY'
import json, pathlib, re, sys
root, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])

def write(target, seeds):
    d = out / target
    d.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    print(f"wrote {len(seeds)} seeds to {d}")

decoder = {}
for path in sorted((root / "spec/vectors").glob("*.json")):
    for v in json.loads(path.read_text())["vectors"]:
        decoder[f"{path.stem}-{v['name']}"] = bytes.fromhex(v["hex"])
write("decoder", decoder)

DEPTH = 5000
pipelines = {}
for path in sorted((root / "examples").glob("*.yaml")):
    pipelines[f"example-{path.stem}"] = path.read_text()
spec = (root / "spec/pipeline.md").read_text()
for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", spec, re.S)):
    pipelines[f"spec-{i}"] = block
deep = {
    "deep-flow-sequence": "[" * DEPTH + "]" * DEPTH,
    "deep-flow-mapping": "{a: " * DEPTH + "b" + "}" * DEPTH,
    "deep-block-sequence": "- " * DEPTH + "x\n",
    "deep-steps": "jobs:\n  a:\n    steps: " + "[" * DEPTH + "]" * DEPTH + "\n",
    "deep-env": "env:\n  A: " + "{a: " * DEPTH + "b" + "}" * DEPTH + "\njobs:\n  a:\n    steps: [x]\n",
    # Block mappings cost depth^2/2 bytes at one space of indentation;
    # 180 levels are 16 KB, inside -max_len.
    "deep-block-mapping": "".join(" " * i + f"k{i}:\n" for i in range(180)) + " " * 180 + "v\n",
}
pipelines.update(deep)
# A matrix before a later stage: expansion and every-earlier-job dependencies.
pipelines["matrix-stages"] = (
    "stages: [build, test]\njobs:\n  b:\n    stage: build\n    matrix:\n"
    "      os: [linux, mac, win]\n      arch: [x86, arm]\n    steps: [make ${{ matrix.os }}]\n"
    "  t:\n    stage: test\n    matrix:\n      n: [1, 2]\n    steps: [test]\n")
write("pipeline", pipelines)

# rest: byte 0 route, byte 1 Content-Type, byte 2 credentials (indices in rest.rs).
CREATE, CREATE_NAMED, UPLOAD, TRIGGER, CANCEL, DRAIN, RAW_GET, RAW_POST = range(8)
JSON, YAML, TEXT, MULTIPART, NO_TYPE, OCTETS = range(6)
API, NOBODY, VIEWER, TOKEN = range(4)
def req(route, ctype, cred, body):
    return bytes([route, ctype, cred]) + (body if isinstance(body, bytes) else body.encode())
def multipart(name, text):
    return (f"--FUZZBOUNDARY\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/yaml\r\n\r\n{text}\r\n--FUZZBOUNDARY--\r\n")
demo = pipelines["example-demo"]
rest = {
    "create-yaml": req(CREATE, YAML, API, demo),
    "create-json-wrapped": req(CREATE, JSON, API, json.dumps({"yaml": demo, "file_name": "demo.yaml"})),
    "create-json-pipeline": req(CREATE_NAMED, JSON, API, json.dumps({"jobs": {"a": {"steps": ["make"]}}})),
    "create-text": req(CREATE, TEXT, API, pipelines["spec-2"]),
    "create-untyped": req(CREATE, NO_TYPE, API, "jobs: {a: {steps: [x]}}\n"),
    "create-octets": req(CREATE, OCTETS, API, "jobs: {a: {steps: [x]}}\n"),
    "create-deep": req(CREATE, YAML, API, deep["deep-flow-sequence"]),
    "create-json-deep": req(CREATE, JSON, API, json.dumps({"yaml": deep["deep-steps"]})),
    "upload": req(UPLOAD, MULTIPART, API, multipart("demo.yaml", demo)),
    "upload-deep": req(UPLOAD, MULTIPART, API, multipart("deep.yaml", deep["deep-block-sequence"])),
    "create-viewer": req(CREATE, YAML, VIEWER, demo),
    "create-token": req(CREATE, YAML, TOKEN, "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln\n" + demo),
    "create-anonymous": req(CREATE, YAML, NOBODY, demo),
    "trigger": req(TRIGGER, NO_TYPE, API, ""),
    "cancel": req(CANCEL, JSON, API, "{}"),
    "drain": req(DRAIN, NO_TYPE, API, ""),
    "raw-list": req(RAW_GET, NO_TYPE, API, "/api/ci/executions?limit=0\n"),
    "raw-pipeline": req(RAW_GET, NO_TYPE, VIEWER, "/api/ci/pipelines/18446744073709551616\n"),
    "raw-logs": req(RAW_GET, NO_TYPE, API, "/api/ci/executions/1/logs?follow=true\n"),
    "raw-create": req(RAW_POST, YAML, API, "/api/ci/pipelines?file_name=%2e%2e%2fx.yaml\n" + demo),
}
write("rest", rest)
PY
