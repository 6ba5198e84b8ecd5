"""`python -m firmware` is the `kpos` command."""
from firmware.cli import main

raise SystemExit(main())
