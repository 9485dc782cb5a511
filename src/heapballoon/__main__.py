from heapballoon.cli import main

raise SystemExit(main())
