import logging
import os
import sys

from sweeper.app import main

if __name__ == "__main__":  # spawned workers import this module too
    try:
        main()
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    if "joblib" in sys.modules:
        # Hydra's joblib launcher ran: its worker processes stop in the interpreter's
        # teardown; after os._exit they would hold our stdout and stderr for 5 minutes.
        sys.exit(code)
    # Everything is written and closed by now; the interpreter's own teardown of
    # torch and diffusers takes ~2 s, so end here once the logs are flushed.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
