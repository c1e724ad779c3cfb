from orthoptim.cli import main

raise SystemExit(main())
