import sys

from cbir.core import config

config.quiet_native_libraries()  # before numpy loads OpenBLAS (cbir.cli.main imports it)

from cbir.cli.main import main  # noqa: E402

sys.exit(main())
