from sdprune.cli import main

raise SystemExit(main())
