"""Suite-wide settings. Machines that run the suite are shared and noisy, so
hypothesis must not fail a test for being slow (no per-example deadline);
CI (CI=true) also prints hypothesis's statistics on failure."""

import os

from hypothesis import settings

settings.register_profile("hwemu", deadline=None, print_blob=True)
settings.register_profile("ci", deadline=None, print_blob=True, derandomize=False)
settings.load_profile("ci" if os.environ.get("CI") else "hwemu")
