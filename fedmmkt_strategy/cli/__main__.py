"""`python -m fedmmkt_strategy.cli ...` is the `fedmmkt` command."""

import sys

from fedmmkt_strategy.cli.main import main

sys.exit(main())
