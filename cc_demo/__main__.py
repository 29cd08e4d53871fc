"""`python -m cc_demo --dir D`: run the demo scenario against a running deployment."""

from cc_demo.run import main

raise SystemExit(main())
