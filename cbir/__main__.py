import sys

from cbir import config

config.quiet_native_libraries()  # before numpy loads OpenBLAS (cbir.cli imports it)

from cbir.cli import main  # noqa: E402

sys.exit(main())
