import sys

from minidalle2.cli import main

sys.exit(main())
