from pdiff.cli import main

raise SystemExit(main())
