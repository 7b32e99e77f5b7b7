"""One prepared accelerator check: the CUDA paths that CI on the CPU never runs.

    python -m bench.device_check [--device cuda:0] [--bundle PATH] [--output FILE] [--skip-stack]

The same code runs on any device; ``--device cpu`` is what CI runs to prove the script itself.
Three groups: the quantized kernels at the bench decoder's shapes (kernels.py), the services'
load functions in process against the same on the CPU (serving.py), and the real processes
started by `autoglm up` (stack.py). Every check is recorded ok or failed with its figures
(runner.py); the exit code is non-zero if any failed. Without --bundle the default bundle is
built and GPTQ-quantized in a temporary folder first.

On the GPU machine, whose image lacks bitsandbytes, FastAPI and friends: first, here,
``python -m bench.device_check.wheels`` (writes bench/results/device-wheels/, about 48 MiB), then
one device call carrying ``bench/results/device-wheels`` with the command

    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site
        bench/results/device-wheels/*.whl
    && export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    && python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
    && python3 -m bench.device_check --device cuda:0 --output $OUT/device_check.json

(one line). The report and the launcher's log (device_check-up.log) come back from $OUT.
"""
