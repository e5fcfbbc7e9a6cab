"""`python -m waddle_common psql -- ARGS`: psql on the pipeline's configured database."""

from waddle_common import main

raise SystemExit(main())
