"""One thread for numpy's BLAS and torch's OpenMP: imported (through harness.py) before either library loads, so a
benchmark's timings do not depend on how many cores the machine has. Explicit settings in the environment win."""
import os

THREAD_VARIABLES = ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')

for variable in THREAD_VARIABLES:
    os.environ.setdefault(variable, '1')
