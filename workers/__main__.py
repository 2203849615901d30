import os
import sys

# Before torch loads OpenMP: its idle threads sleep instead of spinning. Same speed (bench/RESULTS.md),
# and the cores stay free for the API, Redis and other workers sharing the machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from workers.main import main  # noqa: E402

sys.exit(main())
