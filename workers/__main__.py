import sys

from workers.main import main

# OpenMP keeps its default wait policy (spin briefly, then sleep; an idle worker uses ~0.01 cores):
# OMP_WAIT_POLICY=PASSIVE made a one-sentence MiniLM embedding 3-6 ms slower (bench/RESULTS.md).
sys.exit(main())
