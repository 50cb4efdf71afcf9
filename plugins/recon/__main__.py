"""`python -m recon ...`: see recon.cli."""

from recon.cli import main

raise SystemExit(main())
