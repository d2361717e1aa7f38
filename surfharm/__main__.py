import sys

from surfharm.cli import main

sys.exit(main())
