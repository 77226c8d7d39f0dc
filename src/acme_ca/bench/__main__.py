import sys

from acme_ca.bench.cli import main

sys.exit(main())
