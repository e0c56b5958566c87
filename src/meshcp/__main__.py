from meshcp.cli import main

raise SystemExit(main())
