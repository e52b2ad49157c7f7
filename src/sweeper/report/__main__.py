import sys

from sweeper.report.cli import main

sys.exit(main())
