import sys

from micronet.cli import main

sys.exit(main())
