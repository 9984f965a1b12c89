import sys

from minidalle2.tools.cli import main

sys.exit(main())
