from xenhad.cli import main

raise SystemExit(main())
