import sys

from cbir.cli import main

sys.exit(main())
