from clapd.cli import main

raise SystemExit(main())
