from meshcp.cli.main import main

raise SystemExit(main())
