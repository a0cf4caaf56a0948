from tritonlm.cli import main

raise SystemExit(main())
