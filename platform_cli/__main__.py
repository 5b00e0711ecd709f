"""`python -m platform_cli` is `iot-platform` (how the platform starts its own processes)."""

import sys

from platform_cli.main import main

# Guarded: uvicorn's worker processes (`serve --workers N`) re-import this module under another name.
if __name__ == "__main__":
    sys.exit(main())
