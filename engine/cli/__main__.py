"""`python -m engine.cli`: how the bot starts its worker process."""

import sys

from engine.cli.parser import main

sys.exit(main())
