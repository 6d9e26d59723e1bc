"""The pipeline's stages: one module per DVC stage, ``python -m tasks.<stage>``.

This runs before any stage imports torch, so the setting below reaches MKL, which reads it once at load.
By default MKL's sgemm may sum in an order that depends on how its operands happen to lie in memory (its
docs name alignment as a source of run-to-run differences). CI saw it: in 2 of 3 full test runs, the
same tiny config gave the search other gates when `dvc repro` was started from the test process than
when the Prefect flow started it. Strict conditional numerical reproducibility (``AUTO,STRICT``: this
CPU's best instruction set, bitwise reproducible for a given thread count) removes that; a 4096x400 by
400x400 product ran no slower with it here. A value the user set wins.
"""

import os

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
