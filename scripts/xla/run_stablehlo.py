#!/usr/bin/env python3
"""Compiles StableHLO text (MLIR) with XLA's CPU client, as JAX does, and runs it on .npy inputs.

    python3 scripts/xla/run_stablehlo.py model.mlir --out OUT_DIR [IN0.npy IN1.npy ...]
    python3 scripts/xla/run_stablehlo.py --batch jobs.json

The module's entry function must be `@main` (what `qc compile --target xla` emits); inputs are passed
in argument order and must have its argument types (int64 ids stay int64: 64-bit mode is enabled).
Outputs are written as OUT_DIR/output_0.npy, output_1.npy, ... in result order. With --batch, jobs.json
is a list of {"mlir": PATH, "inputs": [PATH, ...], "out": DIR} run in one process (JAX starts once); a
job that fails to compile or run writes OUT/error.txt and the others go on; the exit code is 1 if any
failed. Needs jax (CPU): `bash .ci/install-python.sh`.
"""

import json
import os
import sys
import traceback


def _client():
    import jax

    jax.config.update("jax_enable_x64", True)
    try:
        from jax.extend import backend as jex_backend

        return jex_backend.get_backend("cpu")
    except Exception:  # older or newer layouts
        from jax._src import xla_bridge

        return xla_bridge.get_backend("cpu")


def _compile(client, text):
    from jax._src.lib import xla_client as xc

    opts = xc.CompileOptions()
    devices = client.local_devices()[:1]
    if hasattr(client, "compile_and_load"):
        try:
            return client.compile_and_load(text, xc.DeviceList(tuple(devices)), opts)
        except TypeError:
            return client.compile_and_load(text, devices, opts)
    return client.compile(text, opts)


def run(client, mlir_path, input_paths, out_dir):
    import jax
    import numpy as np

    with open(mlir_path) as f:
        text = f.read()
    exe = _compile(client, text)
    device = client.local_devices()[0]
    args = [jax.device_put(np.load(p), device) for p in input_paths]
    outs = exe.execute(args)
    os.makedirs(out_dir, exist_ok=True)
    for i, o in enumerate(outs):
        np.save(os.path.join(out_dir, f"output_{i}.npy"), np.asarray(o))


def main(argv):
    if len(argv) == 2 and argv[0] == "--batch":
        with open(argv[1]) as f:
            jobs = json.load(f)
        client = _client()
        failed = 0
        for job in jobs:
            try:
                run(client, job["mlir"], job["inputs"], job["out"])
            except Exception:
                failed += 1
                os.makedirs(job["out"], exist_ok=True)
                with open(os.path.join(job["out"], "error.txt"), "w") as f:
                    f.write(traceback.format_exc())
        return 1 if failed else 0
    if len(argv) < 3 or argv[1] != "--out":
        print(__doc__, file=sys.stderr)
        return 2
    run(_client(), argv[0], argv[3:], argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
